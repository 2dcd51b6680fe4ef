//! What stands in for Redis in an embedded instance built with fault injection (feature
//! `testing`): the in-process tiers that take Redis's place (the session store, the limiter's
//! shared window) are reached through it, so [`Faults`] make them slow, failing, hung or
//! unreachable as they would make Redis, and a health monitor of its own sees it.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::cluster::Probe;
use super::faults::Faults;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::health::Health;

/// The in-process stand-in for Redis. Cheap to clone; all clones share the faults and the
/// health, and the probe stops when the last one drops.
#[derive(Clone)]
pub(crate) struct StandIn(Arc<Inner>);

struct Inner {
    faults: Faults,
    health: Health,
    op_timeout: Duration,
    _stop_probe: oneshot::Sender<()>,
}

impl std::fmt::Debug for StandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandIn")
            .field("faults", &self.0.faults)
            .field("health", &self.0.health.state())
            .finish_non_exhaustive()
    }
}

impl StandIn {
    /// Starts the stand-in, `Up` (it is in this process), and its probe, on the intervals a
    /// Redis connection's would use.
    ///
    /// [`Error::NoRuntime`] outside a tokio runtime: the probe needs one.
    pub(crate) fn start(config: &Config) -> Result<StandIn> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime);
        }
        let health = Health::new(config.health.clone(), config.op_timeout);
        health.record_probe_ok(Duration::ZERO);
        let (stop_tx, stop_rx) = oneshot::channel();
        let standin = StandIn(Arc::new(Inner {
            faults: Faults::default(),
            health: health.clone(),
            op_timeout: config.op_timeout,
            _stop_probe: stop_tx,
        }));
        tokio::spawn(probe_loop(Arc::downgrade(&standin.0), health, stop_rx));
        Ok(standin)
    }

    /// Its health monitor.
    pub(crate) fn health(&self) -> &Health {
        &self.0.health
    }

    /// The faults in force on it.
    pub(crate) fn faults(&self) -> &Faults {
        &self.0.faults
    }

    /// Runs `call` as a Redis call would run: refused at once while health is `Down`, then
    /// through the faults in force, within `op_timeout`, feeding health what it met.
    pub(crate) async fn gate<T>(&self, call: impl Future<Output = Result<T>>) -> Result<T> {
        let health = &self.0.health;
        if health.is_down() {
            return Err(Error::Unavailable);
        }
        let call = self.0.faults.plan().run(call);
        super::bounded(health, true, self.0.op_timeout, call).await
    }
}

async fn probe_loop(standin: Weak<Inner>, health: Health, stop: oneshot::Receiver<()>) {
    super::probe_every(health, stop, move || {
        let plan = standin.upgrade()?.faults.plan_probe();
        let started = Instant::now();
        Some(async move {
            match plan.run(async { Ok::<_, Error>(()) }).await {
                Ok(()) => Probe::Ok(started.elapsed()),
                Err(e) => Probe::Failed(e),
            }
        })
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::HealthState;

    fn config() -> Config {
        Config::builder()
            .op_timeout(Duration::from_millis(50))
            .build()
            .expect("valid config")
    }

    #[tokio::test(start_paused = true)]
    async fn faults_reach_its_calls_and_health_follows() {
        let standin = StandIn::start(&config()).unwrap();
        let health = standin.health().clone();
        assert_eq!(health.state(), HealthState::Up);
        assert_eq!(standin.gate(async { Ok(1) }).await.unwrap(), 1);

        standin.faults().hang();
        let hung = standin.gate(async { Ok(2) }).await;
        assert!(matches!(hung, Err(Error::Timeout(_))), "{hung:?}");
        assert!(
            health
                .wait_for(HealthState::Down, Duration::from_secs(5))
                .await
        );
        // Down: refused at once, without waiting for op_timeout.
        let started = tokio::time::Instant::now();
        assert!(matches!(
            standin.gate(async { Ok(3) }).await,
            Err(Error::Unavailable)
        ));
        assert_eq!(started.elapsed(), Duration::ZERO);

        standin.faults().heal();
        assert!(
            health
                .wait_for(HealthState::Up, Duration::from_secs(5))
                .await
        );
        assert_eq!(standin.gate(async { Ok(4) }).await.unwrap(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn an_injected_failure_is_a_refused_connection() {
        let standin = StandIn::start(&config()).unwrap();
        standin.faults().unreachable();
        let failed = standin.gate(async { Ok(()) }).await.unwrap_err();
        assert!(failed.is_connectivity(), "{failed:?}");
    }

    #[test]
    fn it_needs_a_runtime() {
        assert!(matches!(StandIn::start(&config()), Err(Error::NoRuntime)));
    }
}
