//! The systems under test behind one interface: tierkit (any number of instances sharing one
//! Redis) and the peers, the `cached` crate and a hand-rolled moka + redis-rs cache-aside. The
//! driver hands each an operation and records the `Outcome`.

mod amalgam;
mod cached;
mod handrolled;
mod tierkit;

use std::time::Duration;

use ::tierkit::cache::{CacheStats, Source};

use crate::args::Args;
use crate::database::Database;
use crate::workload::Op;
use crate::Result;

pub use self::amalgam::AmalgamPeer;
pub use self::cached::CachedPeer;
pub use self::handrolled::HandRolled;
pub use self::tierkit::Instance;

/// TTL of every cached value, far longer than a run: nothing expires while measuring.
const TTL: Duration = Duration::from_secs(3600);

/// Bytes an L1 entry of a 1 KiB page takes.
const PAGE_BYTES: u64 = 1100;

/// Entries per namespace of a peer's count-bounded L1: as many 1 KiB pages as `--l1-mib`
/// (tierkit's 64 MiB by default) holds, so it is sized as tierkit's byte-bounded one.
fn l1_entries(l1_mib: Option<u64>) -> u64 {
    l1_mib.unwrap_or(64) * 1024 * 1024 / PAGE_BYTES
}

/// A peer's write that went to Redis, or failed.
fn written<T, E>(r: std::result::Result<T, E>) -> Outcome {
    match r {
        Ok(_) => Outcome::Write {
            reached_redis: true,
        },
        Err(_) => Outcome::Error,
    }
}

/// What one operation did.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    Read(Source),
    /// A write, and whether it reached Redis (`false`: this instance's L1 only).
    Write {
        reached_redis: bool,
    },
    /// The call failed; a read was then answered by the loader, as a service would.
    Error,
}

/// What the workload runs through.
pub enum Backend {
    Tierkit(Vec<Instance>),
    Cached(CachedPeer),
    HandRolled(HandRolled),
    Amalgam(AmalgamPeer),
}

impl Backend {
    /// `name` is a label from [`Backend::label`]; `url` is `None` for embedded tierkit.
    pub async fn connect(name: &str, args: &Args, url: Option<&str>) -> Result<Backend> {
        match name {
            "cached" => {
                let url = url.ok_or("the cached peer needs Redis")?;
                return Ok(Backend::Cached(CachedPeer::connect(url).await?));
            }
            "amalgam" => {
                let url = url.ok_or("the amalgam peer needs Redis")?;
                return Ok(Backend::Amalgam(
                    AmalgamPeer::connect(url, args.l1_mib).await?,
                ));
            }
            "hand-rolled" => {
                let url = url.ok_or("the hand-rolled peer needs Redis")?;
                return Ok(Backend::HandRolled(
                    HandRolled::connect(url, args.l1_mib).await?,
                ));
            }
            _ => {}
        }
        let mut instances = Vec::new();
        for _ in 0..args.instances {
            instances.push(Instance::connect(args, url).await?);
        }
        Ok(Backend::Tierkit(instances))
    }

    pub fn label(&self) -> &'static str {
        match self {
            Backend::Tierkit(_) => "tierkit",
            Backend::Cached(_) => "cached",
            Backend::HandRolled(_) => "hand-rolled",
            Backend::Amalgam(_) => "amalgam",
        }
    }

    pub async fn run(&self, task: usize, op: Op, db: &'static Database) -> Outcome {
        match self {
            Backend::Tierkit(instances) => instances[task % instances.len()].run(op, db).await,
            Backend::Cached(peer) => peer.run(op, db).await,
            Backend::HandRolled(peer) => peer.run(op, db).await,
            Backend::Amalgam(peer) => peer.run(op, db).await,
        }
    }

    /// Counters of every namespace of every instance, added up by namespace name.
    pub fn namespace_stats(&self) -> Vec<(String, CacheStats)> {
        let Backend::Tierkit(instances) = self else {
            return Vec::new();
        };
        let mut pages = CacheStats::default();
        let mut users = CacheStats::default();
        for i in instances {
            pages += i.pages.stats();
            users += i.users.stats();
        }
        vec![("pages".into(), pages), ("users".into(), users)]
    }
}
