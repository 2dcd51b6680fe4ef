//! A private `redis-server` child process for integration tests, modelled on
//! redis-rs's `redis-test`.
//!
//! Each server gets a free loopback port (never the shared 6379), its own temp dir
//! (`--dir`) with a log file, and no persistence (`--save ""`, `--appendonly no`).
//! Faults: [`RedisServer::stop`] (a crash: SIGKILL), [`RedisServer::hang`] (SIGSTOP),
//! [`RedisServer::restart`] (same port, same args, same dir). Drop kills the process,
//! and prints the server log if the test is panicking.
//!
//! [`RedisServer::start_tls`] starts one that speaks only TLS on its port (`--port 0
//! --tls-port N`), with certificates from [`Pki`](super::tls::Pki); its [`url`](RedisServer::url)
//! is then `rediss://` and its [`client`](RedisServer::client) speaks TLS.

use std::fs::{self, OpenOptions};
use std::io::ErrorKind as IoErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use redis::{ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisConnectionInfo, ServerErrorKind};

/// Env var naming the `redis-server` binary to use instead of the one on `PATH`.
pub const REDIS_SERVER_BIN_ENV: &str = "REDIS_SERVER_BIN";

/// The shared Redis of the machine; a test server never uses it.
const SHARED_REDIS_PORT: u16 = 6379;
/// How long a (re)started server has to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Fresh ports tried by `start` when another process grabs the port first.
const START_ATTEMPTS: usize = 5;
/// How long `restart` keeps retrying to bind the old port.
const RESTART_BIND_TIMEOUT: Duration = Duration::from_secs(5);
const LOG_FILE: &str = "redis.log";
const STDIO_FILE: &str = "stdio.log";

/// How a test server speaks TLS: its certificate and key, the CA it checks clients with, a
/// client certificate and key for the harness's own connections, and whether the server
/// requires client certificates (`--tls-auth-clients yes`). Made by
/// [`Pki::server`](super::tls::Pki::server) (feature `tls`).
#[derive(Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub auth_clients: bool,
    /// Keeps the files' directory alive as long as the settings are.
    pub keep: Option<std::sync::Arc<tempfile::TempDir>>,
}

impl ServerTls {
    /// `redis-server` arguments: no plain port, TLS on `port`.
    pub fn server_args(&self, port: u16) -> Vec<String> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path(&self.cert),
            "--tls-key-file".into(),
            path(&self.key),
            "--tls-ca-cert-file".into(),
            path(&self.ca),
            "--tls-auth-clients".into(),
            if self.auth_clients { "yes" } else { "no" }.into(),
        ]
    }

    /// `redis-cli` arguments to reach such a server.
    pub fn cli_args(&self) -> Vec<String> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let mut args = vec!["--tls".into(), "--cacert".into(), path(&self.ca)];
        if self.auth_clients {
            args.extend([
                "--cert".into(),
                path(&self.client_cert),
                "--key".into(),
                path(&self.client_key),
            ]);
        }
        args
    }

    /// A client for the harness's own use (readiness, inspection): trusts the CA and, when
    /// the server requires one, presents the client certificate.
    #[cfg(feature = "tls")]
    pub fn client(&self, info: redis::ConnectionInfo) -> redis::Client {
        let read = |p: &Path| fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let certs = redis::TlsCertificates {
            client_tls: self.auth_clients.then(|| redis::ClientTlsConfig {
                client_cert: read(&self.client_cert),
                client_key: read(&self.client_key),
            }),
            root_cert: Some(read(&self.ca)),
        };
        redis::Client::build_with_tls(info, certs).expect("a TLS client for a test server")
    }

    /// Without tierkit's `tls` feature (and in loadgen) the harness speaks no TLS.
    #[cfg(not(feature = "tls"))]
    pub fn client(&self, _info: redis::ConnectionInfo) -> redis::Client {
        panic!("a TLS test server needs tierkit's `tls` feature (cargo test --features tls)")
    }
}

/// A running `redis-server` owned by a test. Killed (and waited for) on drop.
pub struct RedisServer {
    bin: PathBuf,
    args: Vec<String>,
    port: u16,
    /// Set for a server that speaks only TLS (boxed: most servers have none).
    tls: Option<Box<ServerTls>>,
    child: Option<Child>,
    hung: bool,
    // Declared last so the process is gone before its dir is removed.
    dir: tempfile::TempDir,
}

/// Why one launch attempt failed.
enum LaunchError {
    /// The port was taken between choosing it and the server binding it.
    AddrInUse,
    /// Anything else; the message includes the server log.
    Failed(String),
}

impl RedisServer {
    /// Starts a server from `$REDIS_SERVER_BIN` or `redis-server` on `PATH`.
    ///
    /// # Panics
    /// If the binary is missing or the server does not answer PING within 10 s (the
    /// message then includes the server log).
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Like [`start`](Self::start) with extra server arguments, e.g.
    /// `&["--requirepass", "secret"]`. They are kept for [`restart`](Self::restart).
    pub fn start_with(args: &[&str]) -> RedisServer {
        let bin = std::env::var_os(REDIS_SERVER_BIN_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("redis-server"));
        Self::start_with_bin(bin, args)
    }

    /// Like [`start_with`](Self::start_with) with an explicit binary path
    /// (ignores `$REDIS_SERVER_BIN`).
    pub fn start_with_bin(bin: impl AsRef<Path>, args: &[&str]) -> RedisServer {
        Self::start_inner(bin.as_ref(), args, None)
    }

    /// Like [`start_with`](Self::start_with), speaking only TLS on its port with `tls`'s
    /// certificates (`--port 0 --tls-port N`); `args` may add e.g. `--tls-cluster yes`.
    pub fn start_tls(tls: &ServerTls, args: &[&str]) -> RedisServer {
        let bin = std::env::var_os(REDIS_SERVER_BIN_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("redis-server"));
        Self::start_inner(&bin, args, Some(Box::new(tls.clone())))
    }

    fn start_inner(bin: &Path, args: &[&str], tls: Option<Box<ServerTls>>) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("tierkit-redis-")
            .tempdir()
            .expect("create a temp dir for redis-server");
        let mut server = RedisServer {
            bin: bin.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            port: 0,
            tls,
            child: None,
            hung: false,
            dir,
        };
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            match server.launch() {
                Ok(child) => {
                    server.child = Some(child);
                    return server;
                }
                Err(LaunchError::AddrInUse) => continue,
                Err(LaunchError::Failed(msg)) => panic!("{msg}"),
            }
        }
        panic!(
            "redis-server could not bind a free port in {START_ATTEMPTS} attempts\n{}",
            server.log_report()
        );
    }

    /// The TCP port the server listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1:PORT"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `"redis://127.0.0.1:PORT"` (no password, even with `--requirepass`); `rediss://` for a
    /// server started with [`start_tls`](Self::start_tls).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The TLS settings of a server started with [`start_tls`](Self::start_tls).
    pub fn tls(&self) -> Option<&ServerTls> {
        self.tls.as_deref()
    }

    /// The server's process id.
    ///
    /// # Panics
    /// If the server is stopped.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("redis-server is stopped; it has no pid")
            .id()
    }

    /// The server's temp dir (`--dir`); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the process exists and has not exited (a hung server is running).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Whether the server is stopped with [`hang`](Self::hang).
    pub fn is_hung(&self) -> bool {
        self.hung
    }

    /// Crashes the server: SIGKILL, then waits for it. Open connections see a reset or
    /// EOF; new ones are refused. No-op if already stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.hung = false;
    }

    /// Starts the server again on the same port with the same args and dir (stopping
    /// it first if it runs). Data is gone: nothing is persisted.
    ///
    /// # Panics
    /// If the port cannot be bound again within 5 s or the server does not answer.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + RESTART_BIND_TIMEOUT;
        loop {
            match self.launch() {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(LaunchError::AddrInUse) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(50));
                }
                Err(LaunchError::AddrInUse) => panic!(
                    "redis-server could not bind port {} again within {:?}\n{}",
                    self.port,
                    RESTART_BIND_TIMEOUT,
                    self.log_report()
                ),
                Err(LaunchError::Failed(msg)) => panic!("{msg}"),
            }
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn hang(&mut self) {
        self.signal(Signal::SIGSTOP);
        self.hung = true;
    }

    /// Unfreezes a [`hang`](Self::hang)ed server (SIGCONT); queued commands get answered.
    pub fn resume(&mut self) {
        self.signal(Signal::SIGCONT);
        self.hung = false;
    }

    /// The server log file's contents (plus anything it wrote to stdout/stderr), or a
    /// note saying why it could not be read.
    pub fn log(&self) -> String {
        let path = self.dir.path().join(LOG_FILE);
        let mut out = match fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) => format!("<could not read {}: {e}>\n", path.display()),
        };
        if let Ok(stdio) = fs::read_to_string(self.dir.path().join(STDIO_FILE)) {
            if !stdio.trim().is_empty() {
                out.push_str("--- stdout/stderr ---\n");
                out.push_str(&stdio);
            }
        }
        out
    }

    /// A client for this server; authenticates with the `--requirepass` argument if
    /// one was given, and speaks TLS (trusting the test CA, with the client certificate when
    /// the server requires one) to a server started with [`start_tls`](Self::start_tls).
    pub fn client(&self) -> redis::Client {
        match &self.tls {
            Some(tls) => tls.client(self.connection_info()),
            None => {
                redis::Client::open(self.connection_info()).expect("valid redis connection info")
            }
        }
    }

    /// A multiplexed async connection to this server, for tests and benches that look at or
    /// set up Redis directly.
    ///
    /// # Panics
    /// If the server does not accept the connection.
    pub async fn async_connection(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("connect to redis-server on {}: {e}", self.addr()))
    }

    /// The fastest honest configuration of the raw client, for benchmark baselines: a
    /// multiplexed connection without redis-rs's per-request response timeout (a timer per
    /// call, which tierkit's own connection turns off too). Not for tests that hang the
    /// server: a call then waits for ever.
    ///
    /// # Panics
    /// If the server does not accept the connection.
    #[allow(dead_code)] // benches only
    pub async fn fastest_connection(&self) -> redis::aio::MultiplexedConnection {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        self.client()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap_or_else(|e| panic!("connect to redis-server on {}: {e}", self.addr()))
    }

    /// How many keys the server has evicted for `maxmemory` (`INFO stats`, `evicted_keys`).
    ///
    /// # Panics
    /// If the server does not answer.
    pub async fn evicted_keys(&self) -> u64 {
        let mut con = self.async_connection().await;
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut con)
            .await
            .unwrap_or_else(|e| panic!("INFO stats on {}: {e}", self.addr()));
        info.lines()
            .find_map(|l| l.strip_prefix("evicted_keys:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Deletes every key (sync `FLUSHALL`).
    ///
    /// # Panics
    /// If the server does not answer.
    pub fn flushall(&self) {
        let mut con = self
            .client()
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap_or_else(|e| {
                panic!(
                    "connect to redis-server on {} for FLUSHALL: {e}",
                    self.addr()
                )
            });
        redis::cmd("FLUSHALL")
            .query::<()>(&mut con)
            .unwrap_or_else(|e| panic!("FLUSHALL on {}: {e}", self.addr()));
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(self.pid() as i32);
        kill(pid, signal).unwrap_or_else(|e| panic!("send {signal} to redis-server {pid}: {e}"));
    }

    fn password(&self) -> Option<&str> {
        self.args
            .windows(2)
            .rev()
            .find(|w| w[0].eq_ignore_ascii_case("--requirepass"))
            .map(|w| w[1].as_str())
    }

    fn connection_info(&self) -> redis::ConnectionInfo {
        let mut settings = RedisConnectionInfo::default();
        if let Some(password) = self.password() {
            settings = settings.set_password(password);
        }
        let addr = match self.tls {
            Some(_) => ConnectionAddr::TcpTls {
                host: "127.0.0.1".into(),
                port: self.port,
                insecure: false,
                tls_params: None,
            },
            None => ConnectionAddr::Tcp("127.0.0.1".into(), self.port),
        };
        addr.into_connection_info()
            .expect("valid redis connection info")
            .set_redis_settings(settings)
    }

    /// Spawns the server on `self.port` and waits until it answers PING.
    fn launch(&self) -> Result<Child, LaunchError> {
        let dir = self.dir.path();
        let log_path = dir.join(LOG_FILE);
        // Only the part of the log written by this attempt tells why it failed.
        let log_offset = fs::metadata(&log_path)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let stdio = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(STDIO_FILE))
            .expect("create the redis-server stdio log");
        let stderr = stdio.try_clone().expect("clone the stdio log handle");

        let mut cmd = Command::new(&self.bin);
        match &self.tls {
            Some(tls) => cmd.args(tls.server_args(self.port)),
            None => cmd.arg("--port").arg(self.port.to_string()),
        };
        cmd.arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(&log_path)
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--daemonize")
            .arg("no")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdio))
            .stderr(Stdio::from(stderr));
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == IoErrorKind::NotFound => panic!(
                "redis-server not found on PATH; install it (apt-get install redis-server) \
                 or set {REDIS_SERVER_BIN_ENV} (tried `{}`: {e})",
                self.bin.display()
            ),
            Err(e) => panic!("failed to spawn redis-server `{}`: {e}", self.bin.display()),
        };

        let client = self.client();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = self.log();
                let new_part = log.get(log_offset..).unwrap_or(&log);
                if new_part.contains("Address already in use") {
                    return Err(LaunchError::AddrInUse);
                }
                return Err(LaunchError::Failed(format!(
                    "redis-server on port {} exited during startup ({status})\n{}",
                    self.port,
                    self.log_report()
                )));
            }
            if answers_ping(&client) {
                return Ok(child);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LaunchError::Failed(format!(
                    "redis-server on port {} did not answer PING within {READY_TIMEOUT:?}\n{}",
                    self.port,
                    self.log_report()
                )));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn log_report(&self) -> String {
        format!(
            "===== redis-server log ({}) =====\n{}===== end of redis-server log =====",
            self.dir.path().join(LOG_FILE).display(),
            self.log()
        )
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.hung {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "redis-server on port {} (test panicked):\n{}",
                self.port,
                self.log_report()
            );
        }
    }
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("pid", &self.child.as_ref().map(Child::id))
            .field("hung", &self.hung)
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// A loopback port that was free a moment ago (bind :0, read, drop); never 6379.
pub fn free_port() -> u16 {
    loop {
        let listener =
            TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
        let port = listener
            .local_addr()
            .expect("local addr of a bound listener")
            .port();
        if port != SHARED_REDIS_PORT {
            return port;
        }
    }
}

/// Whether a server answers on this client's address: any reply counts, even an
/// error such as NOAUTH (only I/O failures and LOADING mean "not yet").
fn answers_ping(client: &redis::Client) -> bool {
    let timeout = Duration::from_millis(250);
    let result = client
        .get_connection_with_timeout(timeout)
        .and_then(|mut con| {
            con.set_read_timeout(Some(timeout))?;
            redis::cmd("PING").query::<String>(&mut con)
        });
    match result {
        Ok(_) => true,
        Err(e) => {
            !(e.is_io_error()
                || e.is_timeout()
                || e.is_connection_dropped()
                || e.kind() == ErrorKind::Server(ServerErrorKind::BusyLoading))
        }
    }
}
