//! tierkit as the system under test: one instance with its own L1 and the two namespaces.

use std::convert::Infallible;
use std::time::Duration;

use tierkit::cache::{Namespace, Reach, Source};
use tierkit::health::HealthState;
use tierkit::{Config, Tierkit};

use super::{Outcome, TTL};
use crate::args::Args;
use crate::database::{user, Database, Page, User};
use crate::workload::{Ns, Op};
use crate::Result;

/// How long Redis has to come up before a run starts.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// One tierkit instance and its two namespaces.
pub struct Instance {
    pub kit: Tierkit,
    pub pages: Namespace<Page>,
    pub users: Namespace<User>,
}

impl Instance {
    /// An instance on `url` (none: embedded), once its Redis answers.
    pub async fn connect(args: &Args, url: Option<&str>) -> Result<Instance> {
        let mut config = Config::builder();
        if let Some(url) = url {
            config = config.redis_url(url);
        }
        if let Some(mib) = args.l1_mib {
            config = config.l1_capacity(mib * 1024 * 1024);
        }
        // Its own prefix: on a Redis given with --redis-url, never a service's `tierkit:` keys.
        let kit = Tierkit::new(config.prefix("loadgen").build()?)?;
        if let Some(health) = kit.health() {
            if !health.wait_for(HealthState::Up, READY_TIMEOUT).await {
                let why = health.status().last_error;
                return Err(format!(
                    "Redis did not answer within {READY_TIMEOUT:?} ({}); check --redis-url, or \
                     drop it to use a private redis-server",
                    why.as_deref().unwrap_or("no probe finished")
                )
                .into());
            }
        }
        let pages = kit.namespace::<Page>("pages").ttl(TTL).build()?;
        let users = kit.namespace::<User>("users").ttl(TTL).build()?;
        Ok(Instance { kit, pages, users })
    }

    /// Reads are cache-aside (`get_or_set` with the database as loader), writes go through.
    pub async fn run(&self, op: Op, db: &'static Database) -> Outcome {
        // Formatted on the stack: a service with integer ids would not allocate per call.
        let mut digits = itoa::Buffer::new();
        let key = digits.format(op.key);
        let read = |r: tierkit::Result<Source>| r.map_or(Outcome::Error, Outcome::Read);
        let write = |r: tierkit::Result<Reach>| match r {
            Ok(Reach::AllTiers) => Outcome::Write {
                reached_redis: true,
            },
            Ok(_) => Outcome::Write {
                reached_redis: false,
            },
            Err(_) => Outcome::Error,
        };
        match (op.ns, op.read) {
            (Ns::Pages, true) => read(
                self.pages
                    .get_or_set(key, {
                        let id = op.key;
                        move || async move { Ok::<_, Infallible>(db.page(id).await) }
                    })
                    .await
                    .map(|h| h.source()),
            ),
            (Ns::Users, true) => read(
                self.users
                    .get_or_set(key, {
                        let id = op.key;
                        move || async move { Ok::<_, Infallible>(db.user(id).await) }
                    })
                    .await
                    .map(|h| h.source()),
            ),
            (Ns::Pages, false) => write(
                self.pages
                    .set(key, db.corpus.page(op.key, op.revision))
                    .await,
            ),
            (Ns::Users, false) => write(self.users.set(key, user(op.key, op.revision)).await),
        }
    }
}
