//! Loads that go on after their caller got its answer: a load past its soft timeout, and an
//! eager refresh. Bounded in number, and ended when the [`Tierkit`](crate::Tierkit) that
//! started them is dropped.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// Background loads one `Tierkit` runs at once; past it, a soft timeout waits for the load
/// in the foreground and an eager refresh is left to a later hit.
const MAX_LOADS: usize = 256;

/// The background loads of one instance.
#[derive(Debug)]
pub(super) struct Background {
    permits: Arc<Semaphore>,
    closed: watch::Sender<bool>,
}

impl Default for Background {
    fn default() -> Self {
        Background {
            permits: Arc::new(Semaphore::new(MAX_LOADS)),
            closed: watch::Sender::new(false),
        }
    }
}

impl Background {
    /// Runs `work` on the current tokio runtime, if there is one, the instance is open and
    /// fewer than [`MAX_LOADS`] run; returns whether it does.
    pub(super) fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) -> bool {
        match self.reserve() {
            Some(ticket) => {
                ticket.spawn(work);
                true
            }
            None => false,
        }
    }

    /// Room for one background load, taken now and used by [`Ticket::spawn`]: for a caller
    /// that must know before it commits its work to the background.
    pub(super) fn reserve(&self) -> Option<Ticket> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        if *self.closed.borrow() {
            return None;
        }
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(Ticket {
            runtime,
            permit,
            closed: self.closed.subscribe(),
        })
    }

    /// Ends every background load, and starts no more.
    pub(super) fn close(&self) {
        self.closed.send_replace(true);
    }
}

/// Room for one background load.
pub(super) struct Ticket {
    runtime: tokio::runtime::Handle,
    permit: OwnedSemaphorePermit,
    closed: watch::Receiver<bool>,
}

impl Ticket {
    /// Runs `work` until it ends or the instance closes.
    pub(super) fn spawn(self, work: impl Future<Output = ()> + Send + 'static) {
        let Ticket {
            runtime,
            permit,
            mut closed,
        } = self;
        runtime.spawn(async move {
            let _permit = permit;
            tokio::select! {
                () = work => {}
                _ = closed.wait_for(|c| *c) => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closing_ends_the_work_and_refuses_more() {
        let background = Background::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        assert!(background.spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        }));
        background.close();
        // The sender is dropped with the ended work.
        assert!(rx.recv().await.is_none());
        assert!(!background.spawn(async {}));
    }

    #[test]
    fn without_a_runtime_nothing_runs() {
        assert!(!Background::default().spawn(async {}));
    }
}
