//! One load per key per process: the first caller to miss a key leads its load, the others
//! wait for the leader's outcome, value or error.
//!
//! Kept apart from the L1 (moka's own single flight inserts its result unconditionally) so
//! that a loaded value enters the L1 through the same versioned, race-checked put as every
//! other copy. A leader whose call is dropped mid-load hands the lead to a waiter. A lead owns
//! its place, so a load a soft timeout sends to the background keeps it there.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::namespace::Source;
use crate::error::Error;

/// What a load came to: a value (as the L1 keeps it) and where it came from, or the error
/// every waiter shares.
pub(super) type Outcome = std::result::Result<(Arc<dyn Any + Send + Sync>, Source), Arc<Error>>;

type Slot = Arc<watch::Sender<Option<Outcome>>>;
type Slots = Arc<Mutex<HashMap<Box<str>, Slot>>>;

/// The loads in flight in one namespace of this process.
#[derive(Debug, Default)]
pub(super) struct Flights(Slots);

/// A caller's place in a key's load.
pub(super) enum Seat {
    /// Runs the load, and must [`finish`](Lead::finish) it.
    Lead(Lead),
    /// Waits for the leader: `None` when the leader went away without an outcome.
    Wait(watch::Receiver<Option<Outcome>>),
}

/// The lead of one key's load. Dropped without finishing, it lets the waiters go, and one of
/// them leads next.
pub(super) struct Lead {
    slots: Slots,
    key: Box<str>,
    slot: Slot,
}

fn lock(slots: &Slots) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Slot>> {
    slots.lock().unwrap_or_else(|p| p.into_inner())
}

impl Flights {
    /// Joins `key`'s load in flight, or leads a new one.
    pub(super) fn join(&self, key: &str) -> Seat {
        let mut slots = lock(&self.0);
        if let Some(slot) = slots.get(key) {
            return Seat::Wait(slot.subscribe());
        }
        let slot: Slot = Arc::new(watch::Sender::new(None));
        slots.insert(key.into(), slot.clone());
        Seat::Lead(Lead {
            slots: self.0.clone(),
            key: key.into(),
            slot,
        })
    }
}

impl Lead {
    /// Hands `outcome` to every waiter.
    pub(super) fn finish(self, outcome: Outcome) {
        self.slot.send_replace(Some(outcome));
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        let mut slots = lock(&self.slots);
        if slots
            .get(&self.key)
            .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
        {
            slots.remove(&self.key);
        }
    }
}

/// Waits for the leader's outcome; `None` when it went away without one.
pub(super) async fn outcome(mut wait: watch::Receiver<Option<Outcome>>) -> Option<Outcome> {
    wait.wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|o| o.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_share_the_outcome_or_take_the_lead_of_a_dropped_one() {
        let flights = Flights::default();
        let Seat::Lead(lead) = flights.join("k") else {
            panic!("the first caller leads")
        };
        let Seat::Wait(wait) = flights.join("k") else {
            panic!("the second waits")
        };
        lead.finish(Ok((Arc::new(7u32), Source::Loader)));
        let (value, _) = outcome(wait).await.unwrap().unwrap();
        assert_eq!(value.downcast_ref::<u32>(), Some(&7));

        let Seat::Lead(lead) = flights.join("k") else {
            panic!("a finished load leaves no slot")
        };
        let Seat::Wait(wait) = flights.join("k") else {
            panic!("waits")
        };
        drop(lead);
        assert!(outcome(wait).await.is_none());
        assert!(matches!(flights.join("k"), Seat::Lead(_)));
    }
}
