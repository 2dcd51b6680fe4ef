//! What one instance's namespaces share: the L1, the L2 tier, the codec, the key schema, the
//! backplane's state, and the registry of declared namespaces.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use tokio::sync::{oneshot, watch};

use super::background::Background;
use super::l1::{self, L1};
use super::l2::Tier;
use super::namespace::NsShared;
use super::{backplane, owed, stats, tracking};
use crate::codec::{Codec, Keyring};
use crate::config::Config;
use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::keys::Keys;

/// Every namespace declared in one process, by name and by id.
#[derive(Default)]
struct Registry {
    by_name: HashMap<String, Arc<NsShared>>,
    by_id: Vec<Arc<NsShared>>,
}

/// What one [`Tierkit`](crate::Tierkit) shares between its namespaces: the L1, the L2 (Redis,
/// or none), the codec, the key schema and the backplane.
pub(crate) struct CacheCore {
    pub(super) l1: L1,
    /// Which values read from Redis a full L1 takes in.
    pub(super) admission: l1::Admission,
    pub(super) l2: Tier,
    pub(super) codec: Codec,
    /// The keys encrypted namespaces use, from the configuration.
    pub(super) keyring: Option<Keyring>,
    pub(super) keys: Keys,
    /// Tags this instance's backplane messages so it skips its own.
    pub(super) origin: u64,
    /// Whether the backplane is subscribed (always false in embedded mode).
    pub(super) coherent: watch::Sender<bool>,
    /// Set on every (re)subscription until the servers' run ids are checked: a restarted
    /// server may hold older data, so reads skip Redis meanwhile.
    pub(super) runs_unchecked: AtomicBool,
    /// Each server's run id, by address, as last seen.
    pub(super) runs: Mutex<Option<HashMap<String, String>>>,
    registry: Arc<RwLock<Registry>>,
    /// Loads running past their callers.
    pub(super) background: Background,
    /// Stops the backplane listener and the replayer when the core goes.
    _stop: Vec<oneshot::Sender<()>>,
}

impl std::fmt::Debug for CacheCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheCore")
            .field("l1_entries", &self.l1.entry_count())
            .field("l2", &self.l2)
            .field("coherent", &*self.coherent.borrow())
            .finish_non_exhaustive()
    }
}

impl CacheCore {
    /// The cache of one instance: with `conn`, a Redis L2 and a backplane listener; without,
    /// the embedded tier.
    pub(crate) fn new(
        config: &Config,
        conn: Option<Conn>,
        #[cfg(feature = "testing")] standin: Option<crate::conn::StandIn>,
    ) -> Arc<Self> {
        let registry = Arc::new(RwLock::new(Registry::default()));
        let evictions = Arc::downgrade(&registry);
        let on_evict = config.l1_eviction_counts.then_some(move |ns| {
            if let Some(reg) = evictions.upgrade() {
                if let Some(shared) = read(&reg).by_id.get(ns as usize) {
                    stats::bump(&shared.counters.here().evictions);
                }
            }
        });
        let l1 = l1::build(config.l1_capacity, on_evict);
        let origin = fastrand::u64(..);
        #[cfg(feature = "testing")]
        let embedded = || standin.map_or_else(Tier::none, Tier::stand_in);
        #[cfg(not(feature = "testing"))]
        let embedded = Tier::none;
        let (l2, subscription, tracking) = match conn {
            Some(conn) => {
                let channel = config.keys.backplane_channel();
                let subscription = conn.subscribe(channel.clone());
                let tracking = config
                    .client_tracking
                    .then(|| conn.track(vec![config.keys.cache_all()]));
                (
                    Tier::redis(conn, channel, origin),
                    Some(subscription),
                    tracking,
                )
            }
            None => (embedded(), None, None),
        };
        let (mut stop, mut stop_rx) = (Vec::new(), Vec::new());
        if subscription.is_some() {
            for _ in 0..3 {
                let (tx, rx) = oneshot::channel();
                stop.push(tx);
                stop_rx.push(rx);
            }
        }
        let core = Arc::new(CacheCore {
            l1,
            admission: l1::Admission::default(),
            l2,
            codec: config.codec.clone(),
            keyring: config.keyring.clone(),
            keys: config.keys.clone(),
            origin,
            coherent: watch::Sender::new(false),
            runs_unchecked: AtomicBool::new(false),
            runs: Mutex::new(None),
            registry,
            background: Background::default(),
            _stop: stop,
        });
        if let (Some(subscription), Some(listen_stop), Some(replay_stop), Some(track_stop)) =
            (subscription, stop_rx.pop(), stop_rx.pop(), stop_rx.pop())
        {
            let weak = Arc::downgrade(&core);
            tokio::spawn(backplane::listen(weak.clone(), subscription, listen_stop));
            if let Some(tracking) = tracking {
                tokio::spawn(tracking::listen(weak.clone(), tracking, track_stop));
            }
            tokio::spawn(owed::settle_debts(weak, replay_stop));
        }
        core
    }

    /// Returns once the backplane is subscribed (never, embedded).
    pub(crate) async fn wait_coherent(&self) {
        let mut coherent = self.coherent.subscribe();
        // Err only when the core is gone, which cannot happen while `self` lives.
        let _ = coherent.wait_for(|c| *c).await;
    }

    /// Ends the loads running in the background: the instance is going away.
    pub(crate) fn close(&self) {
        self.background.close();
    }

    /// Registers a namespace, or returns the one already declared under that name when it has
    /// the same type and settings.
    pub(super) fn register(&self, candidate: NsShared) -> Result<Arc<NsShared>> {
        let mut reg = self.registry.write().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = reg.by_name.get(&candidate.name) {
            return if existing.same_declaration(&candidate) {
                Ok(existing.clone())
            } else {
                Err(Error::config(
                    "namespace",
                    format!(
                        "{:?} is already declared with another type or other settings; \
                         declare it once and clone the handle",
                        candidate.name
                    ),
                ))
            };
        }
        let id = u32::try_from(reg.by_id.len())
            .map_err(|_| Error::config("namespace", "too many namespaces"))?;
        let mut candidate = candidate;
        candidate.id = id;
        let shared = Arc::new(candidate);
        reg.by_name.insert(shared.name.clone(), shared.clone());
        reg.by_id.push(shared.clone());
        Ok(shared)
    }

    pub(super) fn namespaces(&self) -> Vec<Arc<NsShared>> {
        read(&self.registry).by_id.clone()
    }

    pub(super) fn by_name(&self, name: &str) -> Option<Arc<NsShared>> {
        read(&self.registry).by_name.get(name).cloned()
    }

    /// Stops serving every L1 entry of every namespace, at once and without a clean-up pass,
    /// and forgets the tags' epochs: messages that changed them may have been missed.
    pub(super) fn forget_all(&self) {
        for ns in read(&self.registry).by_id.iter() {
            ns.fresh.forget_l1();
            ns.epochs.forget_tags();
        }
    }
}

fn read(reg: &RwLock<Registry>) -> RwLockReadGuard<'_, Registry> {
    reg.read().unwrap_or_else(|p| p.into_inner())
}
