//! A TCP forwarder for network faults between tierkit and a server: latency, a silent
//! partition (blackhole), dropped connections and refused connections.
//!
//! Runs on std threads, so it works the same under any (or no) tokio runtime, including
//! one with paused time. Every control takes `&self` and applies at once to open
//! connections as well as new ones.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often blocked proxy threads look at the shutdown / closed flags.
const POLL: Duration = Duration::from_millis(20);
/// Timeout for connecting to the target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const BUF_SIZE: usize = 16 * 1024;

/// A TCP proxy on a free 127.0.0.1 port forwarding to one target address.
/// Dropping it closes the listener and every proxied connection, and joins its threads.
pub struct TcpProxy {
    port: u16,
    target: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

struct Shared {
    target: SocketAddr,
    shutdown: AtomicBool,
    blackhole: AtomicBool,
    refuse: AtomicBool,
    delay_nanos: AtomicU64,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

/// One proxied connection: handles used to close both sides from outside.
struct Conn {
    client: TcpStream,
    upstream: TcpStream,
    closed: AtomicBool,
}

impl Conn {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }
}

impl Shared {
    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_nanos.load(Ordering::Relaxed))
    }

    fn stopping(&self, conn: &Conn) -> bool {
        self.shutdown.load(Ordering::SeqCst) || conn.closed.load(Ordering::SeqCst)
    }
}

impl TcpProxy {
    /// Starts a proxy to `target` (e.g. `server.addr()`), listening on a free loopback port.
    ///
    /// # Panics
    /// If `target` does not resolve or no port can be bound.
    pub fn start(target: &str) -> TcpProxy {
        let target = target
            .to_socket_addrs()
            .unwrap_or_else(|e| panic!("proxy target `{target}` does not resolve: {e}"))
            .next()
            .unwrap_or_else(|| panic!("proxy target `{target}` resolves to no address"));
        let listener = loop {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy on 127.0.0.1:0");
            if listener.local_addr().map(|a| a.port()).ok() != Some(6379) {
                break listener;
            }
        };
        let port = listener.local_addr().expect("proxy local addr").port();
        let shared = Arc::new(Shared {
            target,
            shutdown: AtomicBool::new(false),
            blackhole: AtomicBool::new(false),
            refuse: AtomicBool::new(false),
            delay_nanos: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name(format!("tcp-proxy-{port}"))
            .spawn(move || accept_loop(listener, accept_shared))
            .expect("spawn the proxy accept thread");
        TcpProxy {
            port,
            target,
            shared,
            accept_thread: Some(accept_thread),
        }
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1:PORT"` of the proxy.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `"redis://127.0.0.1:PORT"` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The address the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Adds `delay` of one-way latency to every chunk, in both directions (so a round
    /// trip takes at least `2 * delay`). Order is kept and throughput is not limited:
    /// each chunk is due `delay` after it was read. `Duration::ZERO` turns it off.
    pub fn set_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.shared.delay_nanos.store(nanos, Ordering::Relaxed);
    }

    /// A silent network partition: while on, connections are accepted and read, but
    /// nothing is forwarded in either direction, and data read meanwhile (or queued by
    /// [`set_delay`](Self::set_delay)) is discarded. Nothing is closed.
    pub fn blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::SeqCst);
    }

    /// While on, new connections are accepted and closed at once. Open ones stay.
    pub fn refuse(&self, on: bool) {
        self.shared.refuse.store(on, Ordering::SeqCst);
    }

    /// Closes every open proxied connection, both sides. New connections still work.
    pub fn drop_connections(&self) {
        let conns: Vec<Arc<Conn>> = lock(&self.shared.conns).drain().map(|(_, c)| c).collect();
        for conn in conns {
            conn.close();
        }
    }

    /// How many proxied connections are open.
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.drop_connections();
        // Wake the blocking accept; the loop sees the flag and ends.
        let woke = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(1),
        )
        .is_ok();
        if let Some(handle) = self.accept_thread.take() {
            // If the wake-up failed the accept thread may block forever: leave it detached
            // rather than hang the test.
            if woke {
                let _ = handle.join();
            }
        }
    }
}

impl std::fmt::Debug for TcpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpProxy")
            .field("port", &self.port)
            .field("target", &self.target)
            .field("delay", &self.shared.delay())
            .field("blackhole", &self.shared.blackhole.load(Ordering::SeqCst))
            .field("refuse", &self.shared.refuse.load(Ordering::SeqCst))
            .field("open_connections", &self.open_connections())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut handles: Vec<JoinHandle<()>> = Vec::new();
    for stream in listener.incoming() {
        if shared.shutdown.load(Ordering::SeqCst) {
            break;
        }
        let client = match stream {
            Ok(client) => client,
            Err(_) => {
                thread::sleep(POLL);
                continue;
            }
        };
        if shared.refuse.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        handles.retain(|h| !h.is_finished());
        let conn_shared = Arc::clone(&shared);
        match thread::Builder::new()
            .name("tcp-proxy-conn".into())
            .spawn(move || handle_conn(client, conn_shared))
        {
            Ok(handle) => handles.push(handle),
            Err(e) => eprintln!("tcp proxy: could not spawn a connection thread: {e}"),
        }
    }
    drop(listener);
    for handle in handles {
        let _ = handle.join();
    }
}

fn handle_conn(client: TcpStream, shared: Arc<Shared>) {
    let upstream = match TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) {
        Ok(upstream) => upstream,
        Err(_) => {
            // Target down: the client sees its connection closed.
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    };
    let clones = (|| {
        for s in [&client, &upstream] {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(POLL))?;
            s.set_write_timeout(Some(POLL))?;
        }
        Ok::<_, std::io::Error>((
            client.try_clone()?,
            upstream.try_clone()?,
            client.try_clone()?,
            upstream.try_clone()?,
        ))
    })();
    let Ok((client_w, upstream_w, client_ctl, upstream_ctl)) = clones else {
        let _ = client.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
        return;
    };
    let conn = Arc::new(Conn {
        client: client_ctl,
        upstream: upstream_ctl,
        closed: AtomicBool::new(false),
    });
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    lock(&shared.conns).insert(id, Arc::clone(&conn));
    if shared.shutdown.load(Ordering::SeqCst) {
        conn.close();
    }

    thread::scope(|s| {
        let (shared, conn) = (&*shared, &*conn);
        s.spawn(move || pipe(client, upstream_w, shared, conn));
        pipe(upstream, client_w, shared, conn);
    });

    conn.close();
    lock(&shared.conns).remove(&id);
}

/// Forwards `from` -> `to`: a reader stamps each chunk with its due time, a writer sends
/// it once due. Either side ending closes the whole connection.
fn pipe(mut from: TcpStream, mut to: TcpStream, shared: &Shared, conn: &Conn) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::scope(|s| {
        s.spawn(move || {
            let mut buf = vec![0u8; BUF_SIZE];
            while !shared.stopping(conn) {
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if shared.blackhole.load(Ordering::SeqCst) {
                            continue;
                        }
                        let due = Instant::now() + shared.delay();
                        if tx.send((due, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                    Err(e) if is_retryable(&e) => {}
                    Err(_) => break,
                }
            }
            conn.close();
        });

        while !shared.stopping(conn) {
            let (due, chunk) = match rx.recv_timeout(POLL) {
                Ok(item) => item,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if !sleep_until(due, shared, conn) {
                break;
            }
            if shared.blackhole.load(Ordering::SeqCst) {
                continue;
            }
            if !write_all(&mut to, &chunk, shared, conn) {
                break;
            }
        }
        conn.close();
    });
}

/// Sleeps until `due` in short steps; `false` if the connection is closing meanwhile.
fn sleep_until(due: Instant, shared: &Shared, conn: &Conn) -> bool {
    loop {
        if shared.stopping(conn) {
            return false;
        }
        let now = Instant::now();
        if now >= due {
            return true;
        }
        thread::sleep((due - now).min(POLL));
    }
}

/// `write_all` that gives up when the connection is closing (the peer may not read).
fn write_all(to: &mut TcpStream, mut data: &[u8], shared: &Shared, conn: &Conn) -> bool {
    while !data.is_empty() {
        if shared.stopping(conn) {
            return false;
        }
        match to.write(data) {
            Ok(0) => return false,
            Ok(n) => data = &data[n..],
            Err(e) if is_retryable(&e) => {}
            Err(_) => return false,
        }
    }
    true
}

fn is_retryable(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}
