//! Cross-instance single flight ([`single_flight`](super::NamespaceBuilder::single_flight)):
//! before running its loader, an instance takes a lease on the key in Redis; while another
//! holds it, it polls Redis for that instance's value, and loads itself only once the lease
//! is free (the holder filled nothing: it failed, or died and its lease ran out) or its own
//! wait has lasted a lease.

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::l1::AnyValue;
use super::l2::{count_failure, Expect};
use super::loader::FillBasis;
use super::namespace::{Namespace, Source};
use super::read::{L2Read, Replace};
use super::stamp::Stamp;

/// The first pause before polling a key another instance is loading, and the longest.
const POLL_FIRST: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(100);

/// How waiting for another instance's load ended.
pub(super) enum Waited {
    /// Its value, read from Redis, and where it was served from.
    Loaded(AnyValue, Source),
    /// This instance loads: with the lease (`token`) when it took it, and what its fill must
    /// find, from its last read.
    Lead {
        token: Option<u64>,
        basis: FillBasis,
        /// Whether a read while waiting found the key replaced (a tombstone, an entry an
        /// invalidation retired, a cached "not found" where a value is wanted): no copy this
        /// instance held may be served for it.
        replaced: bool,
    },
}

impl<V> Namespace<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Takes the lease on loading `key`, or waits for the holder's value.
    pub(super) async fn await_other_load(
        &self,
        key: &str,
        lease: Duration,
        stamp: Stamp,
        mut basis: FillBasis,
        want_value: bool,
    ) -> Waited {
        let mut replaced = false;
        let token = fastrand::u64(..);
        let give_up = Instant::now() + lease;
        let mut pause = POLL_FIRST;
        loop {
            let taken = async {
                self.l2()?
                    .take_lease(&self.ns.keyspace, key, token, lease)
                    .await
            }
            .await;
            match taken {
                Ok(true) => {
                    return Waited::Lead {
                        token: Some(token),
                        basis,
                        replaced,
                    }
                }
                Ok(false) if Instant::now() < give_up => {}
                Ok(false) => {
                    return Waited::Lead {
                        token: None,
                        basis,
                        replaced,
                    }
                }
                Err(e) => {
                    count_failure(&self.ns.counters, &e);
                    return Waited::Lead {
                        token: None,
                        basis,
                        replaced,
                    };
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL_MAX);
            match self.l2_read(key).await {
                L2Read::Hit(found) if found.value_is_some() || !want_value => {
                    let (value, source) = self.keep_found(key, found, stamp, &Replace::Older);
                    return Waited::Loaded(value, source);
                }
                // The other instance found nothing, and this call wants a value: it loads
                // one itself once the lease is free.
                L2Read::Hit(found) => {
                    replaced = true;
                    let expect = Expect::Version(found.version);
                    basis = self.fill_basis(expect, found.epoch).await;
                }
                L2Read::Stale { expect, epoch, .. } => basis = self.fill_basis(expect, epoch).await,
                L2Read::Miss {
                    expect,
                    epoch,
                    replaced: r,
                } => {
                    replaced |= r;
                    basis = self.fill_basis(expect, epoch).await
                }
                L2Read::Unreachable => {
                    return Waited::Lead {
                        token: None,
                        basis: None,
                        replaced,
                    }
                }
            }
        }
    }

    /// Gives back the lease this instance took, if it took one.
    pub(super) async fn end_lease(&self, key: &str, lease: Option<u64>) {
        let Some(token) = lease else { return };
        let ended = async { self.l2()?.end_lease(&self.ns.keyspace, key, token).await }.await;
        if let Err(e) = ended {
            // The lease runs out on its own.
            count_failure(&self.ns.counters, &e);
        }
    }
}
