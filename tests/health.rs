//! The connection layer and health monitor against real redis-server processes with real
//! faults: kill, SIGSTOP, restart.

mod support;

use std::time::{Duration, Instant};

use support::RedisServer;
use tierkit::health::HealthState;
use tierkit::{Config, Error, Tierkit};

const INTERVAL: Duration = Duration::from_millis(200);
const PROBE_TIMEOUT: Duration = Duration::from_millis(100);
const OP_TIMEOUT: Duration = Duration::from_millis(100);
const FAIL_THRESHOLD: u32 = 3;
// Scheduling slack on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(400);

fn fast_config(url: &str) -> Config {
    Config::builder()
        .redis_url(url)
        .probe_interval(INTERVAL)
        .probe_timeout(PROBE_TIMEOUT)
        .op_timeout(OP_TIMEOUT)
        .fail_threshold(FAIL_THRESHOLD)
        .recover_threshold(2)
        .build()
        .expect("valid config")
}

async fn up(kit: &Tierkit) {
    let health = kit.health().expect("redis configured");
    assert!(
        health
            .wait_for(HealthState::Up, Duration::from_secs(5))
            .await,
        "never came Up: {:?}",
        health.status()
    );
}

async fn set_get(kit: &Tierkit, key: &str, value: &str) -> tierkit::Result<Option<String>> {
    let conn = kit.conn().expect("redis configured");
    conn.query::<()>(redis::cmd("SET").arg(key).arg(value))
        .await?;
    conn.query(redis::cmd("GET").arg(key)).await
}

#[tokio::test]
async fn live_server_is_up_with_latency() {
    let server = RedisServer::start();
    let kit = Tierkit::new(fast_config(&server.url())).unwrap();
    up(&kit).await;
    let status = kit.health().unwrap().status();
    assert_eq!(status.state, HealthState::Up);
    let latency = status.latency.expect("latency recorded");
    assert!(latency < Duration::from_millis(50), "{latency:?}");
    assert_eq!(status.last_error, None);
    assert_eq!(set_get(&kit, "k", "v").await.unwrap().as_deref(), Some("v"));
}

#[tokio::test]
async fn kill_goes_down_in_bound_and_restart_comes_back_on_same_handle() {
    let mut server = RedisServer::start();
    let kit = Tierkit::new(fast_config(&server.url())).unwrap();
    up(&kit).await;
    let health = kit.health().unwrap().clone();

    server.stop();
    let killed = Instant::now();
    let bound = INTERVAL * FAIL_THRESHOLD + PROBE_TIMEOUT + SLACK;
    assert!(
        health.wait_for(HealthState::Down, bound).await,
        "not Down within {bound:?}: {:?}",
        health.status()
    );
    let to_down = killed.elapsed();

    // While Down, calls fail at once instead of waiting for a timeout.
    let started = Instant::now();
    let err = set_get(&kit, "k", "v").await.unwrap_err();
    assert!(matches!(err, Error::Unavailable), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(20));

    server.restart();
    let restarted = Instant::now();
    up(&kit).await;
    let to_up = restarted.elapsed();
    assert_eq!(
        set_get(&kit, "k", "again").await.unwrap().as_deref(),
        Some("again")
    );
    eprintln!("probe interval {INTERVAL:?}: kill -> Down {to_down:?}, restart -> Up {to_up:?}");
}

/// The figures quoted in the README and the issue note: default settings (1 s probe, 3 failures
/// to go down, 2 probes to come back).
#[tokio::test]
async fn default_settings_kill_to_down_and_restart_to_up() {
    let mut server = RedisServer::start();
    let kit = Tierkit::new(Config::builder().redis_url(server.url()).build().unwrap()).unwrap();
    up(&kit).await;
    let health = kit.health().unwrap().clone();

    server.stop();
    let killed = Instant::now();
    // fail_threshold x interval + timeout, plus slack.
    assert!(
        health
            .wait_for(HealthState::Down, Duration::from_millis(3_250) + SLACK)
            .await
    );
    let to_down = killed.elapsed();

    server.restart();
    let restarted = Instant::now();
    assert!(
        health
            .wait_for(HealthState::Up, Duration::from_secs(3) + SLACK)
            .await
    );
    let to_up = restarted.elapsed();
    eprintln!("default settings: kill -> Down {to_down:?}, restart -> Up {to_up:?}");
}

#[tokio::test]
async fn failed_calls_mark_down_before_the_next_probe() {
    let mut server = RedisServer::start();
    let config = Config::builder()
        .redis_url(server.url())
        .op_timeout(OP_TIMEOUT)
        .probe_interval(Duration::from_secs(30))
        .fail_threshold(3)
        .recover_threshold(1)
        .build()
        .unwrap();
    let kit = Tierkit::new(config).unwrap();
    up(&kit).await;
    let conn = kit.conn().unwrap();
    let health = kit.health().unwrap();
    // Two calls failing together are not evidence enough (three are asked for)...
    server.stop();
    for _ in 0..2 {
        let err = conn.query::<()>(&redis::cmd("PING")).await.unwrap_err();
        assert!(err.is_connectivity(), "{err:?}");
    }
    assert_eq!(health.state(), HealthState::Up);
    // ...the third, with none succeeding between, is: Down long before the next probe (30 s).
    let err = conn.query::<()>(&redis::cmd("PING")).await.unwrap_err();
    assert!(err.is_connectivity(), "{err:?}");
    assert_eq!(health.state(), HealthState::Down);
    let err = conn.query::<()>(&redis::cmd("PING")).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable));
    // While Down the probe runs every op timeout, not every 30 s: the server is used again
    // a few round trips after it is back.
    server.restart();
    let back = Instant::now();
    assert!(
        health
            .wait_for(HealthState::Up, OP_TIMEOUT * 10 + SLACK)
            .await,
        "{:?}",
        health.status()
    );
    eprintln!("restart -> Up in {:?}", back.elapsed());
}

#[tokio::test]
async fn hung_server_never_holds_a_call_past_the_op_timeout() {
    let mut server = RedisServer::start();
    let kit = Tierkit::new(fast_config(&server.url())).unwrap();
    up(&kit).await;
    server.hang();
    let conn = kit.conn().unwrap();
    let mut errors = Vec::new();
    // Concurrent callers while hung: each one is released by the timeout or, once the state
    // is Down, at once.
    let started = Instant::now();
    let calls = (0..20).map(|i| {
        let conn = conn.clone();
        async move {
            let t = Instant::now();
            let r = conn
                .query::<Option<String>>(redis::cmd("GET").arg(format!("k{i}")))
                .await;
            (t.elapsed(), r)
        }
    });
    for (took, result) in futures_join(calls).await {
        assert!(took <= OP_TIMEOUT + Duration::from_millis(50), "{took:?}");
        errors.push(result.unwrap_err());
    }
    assert!(errors.iter().all(Error::is_connectivity), "{errors:?}");
    assert!(errors.iter().any(|e| matches!(e, Error::Timeout(_))));
    assert!(started.elapsed() < OP_TIMEOUT * 3);
    // Twenty calls timing out together are evidence enough: Down without waiting for probes.
    assert_eq!(kit.health().unwrap().state(), HealthState::Down);

    // Later calls while still hung return at once.
    let t = Instant::now();
    assert!(conn.query::<()>(&redis::cmd("PING")).await.is_err());
    assert!(t.elapsed() <= OP_TIMEOUT + Duration::from_millis(50));

    server.resume();
    up(&kit).await;
    assert_eq!(set_get(&kit, "k", "v").await.unwrap().as_deref(), Some("v"));
}

async fn futures_join<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task panicked"));
    }
    out
}

#[tokio::test]
async fn starts_without_redis_and_connects_when_it_appears() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.stop();
    let started = Instant::now();
    let kit = Tierkit::new(fast_config(&url)).unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "construction blocked"
    );
    let health = kit.health().unwrap();
    assert_eq!(health.state(), HealthState::Down);
    assert!(matches!(
        set_get(&kit, "k", "v").await.unwrap_err(),
        Error::Unavailable
    ));
    tokio::time::sleep(INTERVAL * 2).await;
    assert_eq!(health.state(), HealthState::Down);
    assert!(health.status().last_error.is_some());

    server.restart();
    up(&kit).await;
    assert_eq!(set_get(&kit, "k", "v").await.unwrap().as_deref(), Some("v"));
}

#[tokio::test]
async fn scripts_reload_after_script_flush_and_pipelines_are_one_round_trip() {
    let server = RedisServer::start();
    let kit = Tierkit::new(fast_config(&server.url())).unwrap();
    up(&kit).await;
    let conn = kit.conn().unwrap();
    let script = redis::Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let n: i64 = conn.invoke(script.key("ctr").arg(2)).await.unwrap();
    assert_eq!(n, 2);
    conn.query::<()>(redis::cmd("SCRIPT").arg("FLUSH"))
        .await
        .unwrap();
    let n: i64 = conn.invoke(script.key("ctr").arg(3)).await.unwrap();
    assert_eq!(n, 5);

    let mut pipe = redis::pipe();
    pipe.cmd("SET").arg("a").arg(1).ignore();
    pipe.cmd("INCR").arg("a");
    pipe.cmd("GET").arg("a");
    let (incr, get): (i64, String) = conn.pipeline(&pipe).await.unwrap();
    assert_eq!((incr, get.as_str()), (2, "2"));

    // A server error reply is an error for the caller but not a health failure.
    let err = conn
        .query::<i64>(redis::cmd("INCR").arg("ctr").arg("extra"))
        .await
        .unwrap_err();
    assert!(!err.is_connectivity(), "{err:?}");
    assert_eq!(kit.health().unwrap().status().consecutive_failures, 0);
}

#[tokio::test]
async fn wrong_password_stays_down_and_says_why() {
    let server = RedisServer::start_with(&["--requirepass", "right"]);
    let url = format!("redis://:wrong@127.0.0.1:{}", server.port());
    let kit = Tierkit::new(fast_config(&url)).unwrap();
    tokio::time::sleep(INTERVAL * 3).await;
    let status = kit.health().unwrap().status();
    assert_eq!(status.state, HealthState::Down);
    let why = status.last_error.unwrap_or_default().to_lowercase();
    assert!(why.contains("auth") || why.contains("pass"), "{why}");
    assert!(
        !why.contains("wrong"),
        "the password leaked into the status: {why}"
    );

    let url = format!("redis://:right@127.0.0.1:{}", server.port());
    let kit = Tierkit::new(fast_config(&url)).unwrap();
    up(&kit).await;
}

#[tokio::test]
async fn forced_down_fails_calls_at_once_and_unforce_restores() {
    let server = RedisServer::start();
    let kit = Tierkit::new(fast_config(&server.url())).unwrap();
    up(&kit).await;
    let health = kit.health().unwrap();
    health.force(HealthState::Down);
    assert!(matches!(
        set_get(&kit, "k", "v").await.unwrap_err(),
        Error::Unavailable
    ));
    health.unforce();
    assert_eq!(set_get(&kit, "k", "v").await.unwrap().as_deref(), Some("v"));
}

async fn client_count(server: &RedisServer) -> usize {
    let mut c = server.async_connection().await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut c)
        .await
        .unwrap();
    // Minus the connection asking.
    list.lines().count() - 1
}

#[tokio::test]
async fn dropping_the_last_handle_ends_the_probe_and_closes_the_connection() {
    let server = RedisServer::start();
    let kit = Tierkit::new(fast_config(&server.url())).unwrap();
    up(&kit).await;
    let health = kit.health().unwrap().clone();
    // The multiplexed connection and the cache backplane's pub/sub connection.
    let coherent = support::eventually(Duration::from_secs(3), || async {
        kit.cache_info().await.coherent
    })
    .await;
    assert!(coherent.is_some());
    assert_eq!(client_count(&server).await, 2);
    let mut rx = health.subscribe();
    drop(kit);
    // The probe and backplane tasks owned nothing but weak handles; with the last handle gone
    // both connections close and no probe touches Redis again.
    let deadline = Instant::now() + Duration::from_secs(2);
    while client_count(&server).await != 0 {
        assert!(Instant::now() < deadline, "connection leaked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rx.mark_unchanged();
    tokio::time::sleep(INTERVAL * 3).await;
    assert!(!rx.has_changed().unwrap_or(false), "a probe ran after drop");
}

#[test]
fn embedded_mode_connects_nothing_and_needs_no_runtime() {
    // No runtime exists here: had anything tried to spawn a task or connect, this would fail.
    let kit = Tierkit::new(Config::default()).unwrap();
    assert!(kit.is_embedded());
    assert!(kit.conn().is_none());
    assert!(kit.health().is_none());
}

#[test]
fn redis_mode_outside_a_runtime_is_a_clear_error() {
    let err = Tierkit::new(fast_config("redis://127.0.0.1:1")).unwrap_err();
    assert!(matches!(err, Error::NoRuntime), "{err:?}");
}
