//! Server-assisted coherence ([`client_tracking`](crate::ConfigBuilder::client_tracking)): the
//! server pushes the name of every cache entry anyone modifies, tierkit or another program
//! (`redis-cli SET`, a service in another language), and the instance drops its L1 copy.
//!
//! It runs beside the backplane, which still carries what only tierkit knows (a tag, a
//! pattern, a clear): tracking covers the writes the backplane cannot hear of. It reaches
//! this instance's own writes too, so the L1 copy a write or a fill just made is dropped a
//! round trip later and the next read is an L2 hit: the price of also seeing other programs'
//! writes (BENCHMARKS.md measures it).

use std::sync::Weak;

use tokio::sync::oneshot;

use super::backplane::Op;
use super::base::CacheCore;
use crate::conn::{Invalidated, Report, Tracking};

impl CacheCore {
    /// Drops the L1 copy of the entry at Redis key `key`, if it is one of a declared
    /// namespace's.
    async fn on_modified(&self, key: &[u8]) {
        let Ok(key) = std::str::from_utf8(key) else {
            return;
        };
        let Some((name, version, key)) = self.keys.parse_cache_entry(key) else {
            // An epoch, a lease, or not the cache's: the backplane tells of those changes.
            return;
        };
        let Some(ns) = self.by_name(name).filter(|ns| ns.version == version) else {
            return;
        };
        let op = Op::Keys {
            ns: ns.name.clone(),
            keys: vec![key.to_owned()],
        };
        self.apply(&ns, &op).await;
    }
}

pub(super) async fn listen(
    core: Weak<CacheCore>,
    mut tracking: Tracking,
    mut stop: oneshot::Receiver<()>,
) {
    let mut lost_logged = false;
    loop {
        let event = tokio::select! {
            _ = &mut stop => return,
            e = tracking.next() => e,
        };
        let Some(event) = event else { return };
        let Some(core) = core.upgrade() else { return };
        match event {
            // Modifications made while tracking was down went unheard.
            Report::Up | Report::Item(Invalidated::All) => {
                core.forget_all();
                if lost_logged {
                    tracing::info!("tierkit: client tracking restarted; L1 dropped");
                    lost_logged = false;
                }
            }
            Report::Item(Invalidated::Keys(keys)) => {
                for key in keys {
                    core.on_modified(&key).await;
                }
            }
            Report::Lost(reason) => {
                if !lost_logged {
                    tracing::warn!(
                        reason,
                        "tierkit: client tracking lost; writes by other programs go unseen until it restarts"
                    );
                    lost_logged = true;
                }
            }
        }
    }
}
