//! Tests of the test harness itself (`tests/support`), against real processes.

mod support;

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use redis::AsyncCommands;
use support::{eventually, RedisServer, TcpProxy};

const SHORT: Duration = Duration::from_millis(200);

fn sync_ping(url: &str) -> redis::RedisResult<String> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_connection_with_timeout(Duration::from_secs(1))?;
    con.set_read_timeout(Some(Duration::from_secs(1)))?;
    redis::cmd("PING").query(&mut con)
}

async fn async_con(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn pid_is_gone(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None) == Err(Errno::ESRCH)
}

#[test]
fn start_answers_ping_on_a_private_port() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    assert_ne!(a.port(), 6379);
    assert_ne!(b.port(), 6379);
    assert_ne!(a.port(), b.port());
    assert_eq!(a.addr(), format!("127.0.0.1:{}", a.port()));
    assert_eq!(a.url(), format!("redis://127.0.0.1:{}", a.port()));
    assert_eq!(sync_ping(&a.url()).unwrap(), "PONG");
    assert_eq!(sync_ping(&b.url()).unwrap(), "PONG");
    assert!(
        a.log().contains("Ready to accept connections"),
        "{}",
        a.log()
    );
}

#[test]
fn start_with_passes_extra_args_and_client_authenticates() {
    let server = RedisServer::start_with(&["--requirepass", "secret"]);
    let err = sync_ping(&server.url()).unwrap_err();
    assert_eq!(err.code(), Some("NOAUTH"), "{err}");
    let mut con = server.client().get_connection().unwrap();
    assert_eq!(
        redis::cmd("PING").query::<String>(&mut con).unwrap(),
        "PONG"
    );
    server.flushall();
}

#[test]
fn flushall_deletes_keys() {
    let server = RedisServer::start();
    let mut con = server.client().get_connection().unwrap();
    redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query::<()>(&mut con)
        .unwrap();
    server.flushall();
    let v: Option<String> = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(v, None);
}

#[test]
fn stop_then_restart_on_the_same_port_without_data() {
    let mut server = RedisServer::start();
    let port = server.port();
    let mut con = server.client().get_connection().unwrap();
    redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query::<()>(&mut con)
        .unwrap();

    server.stop();
    assert!(!server.is_running());
    assert!(redis::cmd("GET")
        .arg("k")
        .query::<Option<String>>(&mut con)
        .is_err());
    let err = sync_ping(&server.url()).unwrap_err();
    assert!(err.is_connection_refusal(), "{err}");

    server.restart();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_eq!(sync_ping(&server.url()).unwrap(), "PONG");
    let mut con = server.client().get_connection().unwrap();
    let v: Option<String> = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(v, None, "nothing is persisted across a restart");
}

#[test]
fn restart_of_a_running_server_keeps_the_port() {
    let mut server = RedisServer::start();
    let (port, pid) = (server.port(), server.pid());
    server.restart();
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), pid);
    assert_eq!(sync_ping(&server.url()).unwrap(), "PONG");
}

#[tokio::test]
async fn hang_times_out_and_resume_answers() {
    let mut server = RedisServer::start();
    let mut con = async_con(&server.url()).await;
    let _: () = con.set("k", "v").await.unwrap();

    server.hang();
    assert!(server.is_running() && server.is_hung());
    let start = Instant::now();
    let res = tokio::time::timeout(SHORT, con.get::<_, Option<String>>("k")).await;
    assert!(
        res.is_err(),
        "GET must time out while the server is hung: {res:?}"
    );
    assert!(start.elapsed() >= SHORT);

    server.resume();
    let v = tokio::time::timeout(Duration::from_secs(2), con.get::<_, Option<String>>("k"))
        .await
        .expect("answers after resume")
        .unwrap();
    assert_eq!(v.as_deref(), Some("v"));
}

#[test]
fn drop_kills_the_process() {
    let server = RedisServer::start();
    let pid = server.pid();
    assert!(!pid_is_gone(pid));
    drop(server);
    let deadline = Instant::now() + Duration::from_secs(2);
    while !pid_is_gone(pid) {
        assert!(
            Instant::now() < deadline,
            "redis-server {pid} outlived its RedisServer"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn drop_kills_a_hung_process() {
    let mut server = RedisServer::start();
    server.hang();
    let pid = server.pid();
    drop(server);
    let deadline = Instant::now() + Duration::from_secs(2);
    while !pid_is_gone(pid) {
        assert!(
            Instant::now() < deadline,
            "hung redis-server {pid} outlived its RedisServer"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn drop_during_a_panic_kills_the_process() {
    let (tx, rx) = std::sync::mpsc::channel();
    let res = std::thread::spawn(move || {
        let server = RedisServer::start();
        tx.send(server.pid()).unwrap();
        panic!("deliberate test panic (the server log printed above/below is expected)");
    })
    .join();
    assert!(res.is_err());
    let pid = rx.recv().unwrap();
    assert!(
        pid_is_gone(pid),
        "redis-server {pid} survived a panicking test"
    );
}

#[test]
#[should_panic(
    expected = "redis-server not found on PATH; install it (apt-get install redis-server) or set REDIS_SERVER_BIN"
)]
fn missing_binary_panics_with_a_clear_message() {
    let _ = RedisServer::start_with_bin("/nonexistent/redis-server", &[]);
}

#[test]
fn bad_args_panic_with_the_server_log() {
    let res = std::panic::catch_unwind(|| RedisServer::start_with(&["--no-such-directive", "x"]));
    let msg = match res {
        Ok(_) => panic!("a bad directive must fail to start"),
        Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(msg.contains("exited during startup"), "{msg}");
    assert!(msg.contains("redis-server log"), "{msg}");
    assert!(
        msg.contains("no-such-directive"),
        "the log should name the bad directive: {msg}"
    );
}

#[tokio::test]
async fn eventually_reports_elapsed_or_none() {
    let start = Instant::now();
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = flag.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        f.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let took = eventually(Duration::from_secs(1), || {
        let flag = flag.clone();
        async move { flag.load(std::sync::atomic::Ordering::SeqCst) }
    })
    .await
    .expect("condition holds");
    assert!(
        took >= Duration::from_millis(40) && took < Duration::from_millis(500),
        "{took:?}"
    );
    assert!(eventually(Duration::from_millis(50), || async { false })
        .await
        .is_none());
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
fn proxy_forwards() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(&server.addr());
    assert_ne!(proxy.port(), server.port());
    assert_eq!(proxy.url(), format!("redis://127.0.0.1:{}", proxy.port()));
    assert_eq!(sync_ping(&proxy.url()).unwrap(), "PONG");

    let mut con = redis::Client::open(proxy.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let big = "x".repeat(1 << 20);
    redis::cmd("SET")
        .arg("big")
        .arg(&big)
        .query::<()>(&mut con)
        .unwrap();
    let got: String = redis::cmd("GET").arg("big").query(&mut con).unwrap();
    assert_eq!(got.len(), big.len());
    assert_eq!(proxy.open_connections(), 1);
}

#[tokio::test]
async fn proxy_delay_adds_latency() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(&server.addr());
    let mut con = async_con(&proxy.url()).await;
    let _: () = redis::cmd("PING").query_async(&mut con).await.unwrap();

    proxy.set_delay(Duration::from_millis(100));
    let start = Instant::now();
    let _: () = redis::cmd("PING").query_async(&mut con).await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );

    proxy.set_delay(Duration::ZERO);
    let start = Instant::now();
    let _: () = redis::cmd("PING").query_async(&mut con).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn proxy_delay_does_not_serialize_concurrent_requests() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(&server.addr());
    let con = async_con(&proxy.url()).await;
    proxy.set_delay(Duration::from_millis(100));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut con = con.clone();
        tasks.push(tokio::spawn(async move {
            let _: () = con.set(format!("k{i}"), i).await.unwrap();
        }));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    // 20 round trips of >= 200 ms each, overlapped: far less than 20 * 200 ms (and less
    // than the >= 2 s that delaying chunks one after another would take).
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(1500),
        "{took:?}"
    );
}

#[tokio::test]
async fn proxy_blackhole_times_out_then_new_connection_works() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(&server.addr());
    let mut con = async_con(&proxy.url()).await;
    let _: () = con.set("k", "v").await.unwrap();

    proxy.blackhole(true);
    let res = tokio::time::timeout(SHORT, con.get::<_, Option<String>>("k")).await;
    assert!(res.is_err(), "GET must time out while blackholed: {res:?}");
    assert_eq!(proxy.open_connections(), 1, "a blackhole closes nothing");

    proxy.blackhole(false);
    let mut fresh = async_con(&proxy.url()).await;
    let v: Option<String> = tokio::time::timeout(Duration::from_secs(2), fresh.get("k"))
        .await
        .expect("a new connection answers once the blackhole is off")
        .unwrap();
    assert_eq!(v.as_deref(), Some("v"));
}

#[tokio::test]
async fn proxy_drop_connections_breaks_open_ones_only() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(&server.addr());
    let client = redis::Client::open(proxy.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = con.set("k", "v").await.unwrap();

    proxy.drop_connections();
    let res = tokio::time::timeout(Duration::from_secs(2), con.get::<_, Option<String>>("k"))
        .await
        .expect("a dropped connection fails fast, it does not hang");
    assert!(
        res.is_err(),
        "an existing connection must fail after drop_connections: {res:?}"
    );

    let mut fresh = client.get_multiplexed_async_connection().await.unwrap();
    let v: Option<String> = fresh.get("k").await.unwrap();
    assert_eq!(v.as_deref(), Some("v"));
}

#[test]
fn proxy_drop_connections_breaks_sync_connection() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(&server.addr());
    let mut con = redis::Client::open(proxy.url())
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(
        redis::cmd("PING").query::<String>(&mut con).unwrap(),
        "PONG"
    );
    proxy.drop_connections();
    assert!(redis::cmd("PING").query::<String>(&mut con).is_err());
    assert!(eventually_sync(|| proxy.open_connections() == 0));
    assert_eq!(sync_ping(&proxy.url()).unwrap(), "PONG");
}

#[test]
fn proxy_refuse_makes_connecting_fail() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(&server.addr());
    let mut open = redis::Client::open(proxy.url())
        .unwrap()
        .get_connection()
        .unwrap();

    proxy.refuse(true);
    assert!(sync_ping(&proxy.url()).is_err());
    assert_eq!(
        redis::cmd("PING").query::<String>(&mut open).unwrap(),
        "PONG",
        "refuse leaves open connections alone"
    );

    proxy.refuse(false);
    assert_eq!(sync_ping(&proxy.url()).unwrap(), "PONG");
}

#[test]
fn proxy_to_a_stopped_server_closes_the_client() {
    let mut server = RedisServer::start();
    let proxy = TcpProxy::start(&server.addr());
    server.stop();
    assert!(sync_ping(&proxy.url()).is_err());
    server.restart();
    assert_eq!(sync_ping(&proxy.url()).unwrap(), "PONG");
}

#[test]
fn proxy_drop_closes_everything() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(&server.addr());
    let url = proxy.url();
    let mut con = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(
        redis::cmd("PING").query::<String>(&mut con).unwrap(),
        "PONG"
    );
    proxy.blackhole(true);
    proxy.set_delay(Duration::from_secs(30));

    let start = Instant::now();
    drop(proxy);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "drop took {:?}",
        start.elapsed()
    );
    assert!(redis::cmd("PING").query::<String>(&mut con).is_err());
    assert!(sync_ping(&url).is_err(), "the listener is closed");
}

fn eventually_sync(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}
