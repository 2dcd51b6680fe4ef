//! The in-process tier of the limiter: a keyed governor (GCRA) holding this instance's share of
//! the quota, with exact state for the keys that are active and bounded memory, timed by the
//! configured clock.
//!
//! Keys are identified by a 64-bit SipHash under a random per-process key (std's
//! `RandomState`), so no one can aim a key at another's state offline. Up to `max_keys` keys
//! get a state of their own; once that many are active, new keys share `max_keys` buckets
//! (stricter for them, never laxer) until idle states are dropped. A flood of new keys thus
//! never spends the budget of a key that was already active, and memory stays at most
//! `2 × max_keys` small entries.

use std::convert::Infallible;
use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::RateLimiter;
use rustc_hash::FxBuildHasher;

use super::clock::LocalClock;
use super::decider::{Control, Controlled, Decider};
use super::{Decision, Quota, Tier};
use crate::config::SharedClock;

type Keyed = RateLimiter<u64, Store, LocalClock, StateInformationMiddleware>;

/// How often (in checks) idle keys are dropped from the state store. A pass walks the whole
/// store, so it is rare; while new keys overflow into the shared buckets it also runs at most
/// once per [`PRUNE_OVERFLOWING`], to give them exact states again soon.
const PRUNE_EVERY: u64 = 1 << 16;
const PRUNE_OVERFLOWING: Duration = Duration::from_secs(1);

/// Governor's per-key states: exact for up to `cap` keys, then shared buckets. Keys are already
/// keyed hashes, so the maps need only Fx's cheap multiply.
struct Store(Arc<Maps>);

struct Maps {
    exact: DashMap<u64, InMemoryState, FxBuildHasher>,
    shared: DashMap<u64, InMemoryState, FxBuildHasher>,
    cap: usize,
    /// `exact`'s length, kept by hand: `DashMap::len` locks every shard.
    exact_len: AtomicUsize,
}

impl Maps {
    fn overflowing(&self) -> bool {
        self.exact_len.load(Ordering::Relaxed) >= self.cap
    }

    /// The shared bucket of `key`: the high bits of the product (Lemire's multiply-shift).
    fn bucket(&self, key: u64) -> u64 {
        ((u128::from(key) * self.cap as u128) >> 64) as u64
    }

    /// Approximate bytes held by both maps.
    fn bytes(&self) -> usize {
        // An entry plus hashbrown's control byte.
        let per = std::mem::size_of::<(u64, InMemoryState)>() + 1;
        (self.exact.capacity() + self.shared.capacity()) * per
    }
}

impl StateStore for Store {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let maps = &self.0;
        if let Some(state) = maps.exact.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        if !maps.overflowing() {
            let state = maps.exact.entry(*key).or_insert_with(|| {
                maps.exact_len.fetch_add(1, Ordering::Relaxed);
                // A key that spent from a shared bucket while the store overflowed starts from
                // that bucket's state, never from a fresh one: the bucket holds at least the
                // key's own spending, so moving to an exact state is never laxer.
                let state = InMemoryState::default();
                if let Some(tat) = maps.shared.get(&maps.bucket(*key)).and_then(|b| tat_of(&b)) {
                    let _ = state
                        .measure_and_replace(&NotKeyed::NonKey, |_| Ok::<_, Infallible>(((), tat)));
                }
                state
            });
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let state = maps.shared.entry(maps.bucket(*key)).or_default();
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

/// A state's theoretical arrival time; `None` for a fresh one.
fn tat_of(state: &InMemoryState) -> Option<Nanos> {
    // Governor reads a state only through `measure_and_replace`; a closure that declines to
    // replace hands the value back unchanged.
    state
        .measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>)
        .err()
        .flatten()
}

impl ShrinkableKeyedStateStore<u64> for Store {
    fn retain_recent(&self, drop_below: Nanos) {
        // A state whose theoretical arrival time is past is indistinguishable from a fresh
        // one: dropping it changes no decision.
        let recent =
            |_: &u64, state: &mut InMemoryState| tat_of(state).is_some_and(|tat| tat > drop_below);
        let maps = &self.0;
        maps.exact.retain(recent);
        maps.shared.retain(recent);
        maps.exact_len.store(maps.exact.len(), Ordering::Relaxed);
    }

    fn len(&self) -> usize {
        self.0.exact.len() + self.0.shared.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub(super) struct Local {
    limiter: Keyed,
    maps: Arc<Maps>,
    /// The per-process key of the hash that identifies keys.
    hasher: RandomState,
    /// When the last prune ran, on the limiter's clock (ns); for overflow-driven prunes.
    pruned_at: AtomicU64,
    /// The clock reading governor measures states from (read just before it did: the few
    /// nanoseconds between are nothing next to a period).
    start: Nanos,
    /// The quota's limit, which decisions report.
    limit: u32,
    /// The share of the quota this tier enforces.
    share: NonZeroU32,
    /// The GCRA burst: half the share.
    burst: u32,
    /// Time for one unit to come back.
    period: Duration,
    window: Duration,
}

thread_local! {
    static CHECKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl Local {
    /// `strict`: never more than `share` in any window (the fallback for a Redis that is down,
    /// where the share is a promise to the other instances). Otherwise plain GCRA with the
    /// whole share as burst (embedded mode): a client can reach up to twice the share across
    /// a window boundary, as with governor itself.
    pub(super) fn new(
        quota: Quota,
        share: NonZeroU32,
        max_keys: u64,
        strict: bool,
        clock: &SharedClock,
    ) -> Self {
        let window = quota.window();
        // GCRA allows its burst plus one unit per period in any window: a burst of half the
        // share, refilled over two windows, never lets more than the share through in any
        // window (a steady client gets half the share per window while Redis is down).
        let burst = if strict {
            NonZeroU32::new(share.get().div_ceil(2)).unwrap_or(NonZeroU32::MIN)
        } else {
            share
        };
        let refill = if strict {
            share.get() - burst.get()
        } else {
            share.get()
        };
        let period = if refill == 0 {
            window * 2
        } else {
            (window / refill).max(Duration::from_nanos(1))
        };
        let gcra = governor::Quota::with_period(period)
            .unwrap_or_else(|| governor::Quota::per_second(burst))
            .allow_burst(burst);
        let maps = Arc::new(Maps {
            exact: DashMap::with_hasher(FxBuildHasher),
            shared: DashMap::with_hasher(FxBuildHasher),
            cap: usize::try_from(max_keys.max(1)).unwrap_or(usize::MAX),
            exact_len: AtomicUsize::new(0),
        });
        let clock = LocalClock::new(clock);
        let start = clock.now();
        Local {
            limiter: RateLimiter::new(gcra, Store(Arc::clone(&maps)), clock),
            maps,
            hasher: RandomState::new(),
            pruned_at: AtomicU64::new(0),
            start,
            limit: quota.limit(),
            share,
            burst: burst.get(),
            period,
            window,
        }
    }

    pub(super) fn share(&self) -> u32 {
        self.share.get()
    }

    /// Live states: keys with their own plus shared buckets.
    pub(super) fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Approximate bytes the states take.
    pub(super) fn bytes(&self) -> usize {
        self.maps.bytes()
    }

    /// Drops idle states every [`PRUNE_EVERY`] checks (per thread), and at most once per
    /// [`PRUNE_OVERFLOWING`] while new keys overflow into the shared buckets.
    fn prune_if_due(&self) {
        // Counted per thread (one count for every limiter on it): a shared atomic would cost a
        // locked add on every check for an event that only has to happen now and then.
        let mut due = CHECKS.with(|c| {
            let next = c.get().wrapping_add(1);
            c.set(next);
            next % PRUNE_EVERY == 0
        });
        if !due && self.maps.overflowing() {
            let now = self.limiter.clock().now().as_u64();
            let last = self.pruned_at.load(Ordering::Relaxed);
            due = now.saturating_sub(last) >= PRUNE_OVERFLOWING.as_nanos() as u64
                && self
                    .pruned_at
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok();
        }
        if due {
            // No shrink_to_fit: the store is bounded anyway, and shrinking made the next
            // inserts grow (rehash) it again, a sixth of a check's time in a profile.
            self.limiter.retain_recent();
        }
    }

    fn decide_now(&self, key: &str, n: NonZeroU32) -> Decision {
        self.prune_if_due();
        let limit = self.limit;
        let burst = self.burst;
        let id = self.hasher.hash_one(key);
        // One unit (the usual request) takes governor's single-cell test, which skips the
        // capacity check and the batch weight that `check_key_n` needs.
        let outcome = if n == NonZeroU32::MIN {
            Ok(self.limiter.check_key(&id))
        } else {
            self.limiter.check_key_n(&id, n)
        };
        match outcome {
            Ok(Ok(snapshot)) => {
                let remaining = snapshot.remaining_burst_capacity();
                Decision {
                    allowed: true,
                    limit,
                    remaining,
                    reset_after: self.period * (burst - remaining.min(burst)),
                    retry_after: None,
                    tier: Tier::Local,
                    decided_at: None,
                    degraded: false,
                }
            }
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                Decision {
                    allowed: false,
                    limit,
                    remaining: 0,
                    reset_after: self.period * burst,
                    retry_after: Some(wait.max(Duration::from_millis(1))),
                    tier: Tier::Local,
                    decided_at: None,
                    degraded: false,
                }
            }
            // More units than the local burst: never allowed locally.
            Err(_) => Decision {
                allowed: false,
                limit,
                remaining: 0,
                reset_after: self.window,
                retry_after: Some(self.window),
                tier: Tier::Local,
                decided_at: None,
                degraded: false,
            },
        }
    }
}

impl Local {
    /// Now, as governor measures states.
    fn now(&self) -> Nanos {
        self.limiter.clock().now().saturating_sub(self.start)
    }

    /// The decision a key would get for one more unit, spending nothing: from its own state,
    /// else from the shared bucket it would start from.
    fn peek(&self, key: &str) -> Decision {
        let id = self.hasher.hash_one(key);
        let maps = &self.maps;
        let tat = match maps.exact.get(&id) {
            Some(state) => tat_of(&state),
            None => maps
                .shared
                .get(&maps.bucket(id))
                .and_then(|state| tat_of(&state)),
        };
        let now = self.now().as_u64();
        let period = u64::try_from(self.period.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let tat = tat.map_or(now, |t| t.as_u64().max(now));
        // Units whose periods fit between the state's arrival time and the end of the burst
        // tolerance.
        let room = now
            .saturating_add(period.saturating_mul(u64::from(self.burst)))
            .saturating_sub(tat);
        let remaining = u32::try_from(room / period)
            .unwrap_or(u32::MAX)
            .min(self.burst);
        Decision {
            allowed: remaining >= 1,
            limit: self.limit,
            remaining,
            reset_after: Duration::from_nanos(tat.saturating_sub(now)),
            retry_after: (remaining == 0)
                .then(|| Duration::from_nanos(period.saturating_sub(room % period).max(1))),
            tier: Tier::Local,
            decided_at: None,
            degraded: false,
        }
    }

    /// Gives back up to `n` units to a key with a state of its own (a key in a shared bucket
    /// gets none: the units might be another key's), or forgets its state.
    fn adjust(&self, key: &str, op: Control) {
        let id = self.hasher.hash_one(key);
        match op {
            Control::Reset => {
                if self.maps.exact.remove(&id).is_some() {
                    self.maps.exact_len.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Control::Refund(n) => {
                let Some(state) = self.maps.exact.get(&id) else {
                    return;
                };
                let now = self.now();
                let back = Nanos::from(self.period.saturating_mul(n.get()));
                let _ = state.measure_and_replace(&NotKeyed::NonKey, |tat| {
                    let tat = tat.unwrap_or(now);
                    Ok::<_, Infallible>(((), tat.saturating_sub(back).max(now)))
                });
            }
            Control::Peek => {}
        }
    }
}

/// The local tier for every quota of a limiter, decided together: a request spends on all of
/// them or on none (what an earlier quota admitted is given back when a later one refuses; a
/// key in a shared bucket gets nothing back, which is stricter, never laxer).
pub(super) struct LocalSet(Vec<Local>);

impl LocalSet {
    /// One tier per quota, the limiter's own first; `tiers` is never empty.
    pub(super) fn new(tiers: Vec<Local>) -> Self {
        LocalSet(tiers)
    }

    /// The share of the limiter's own quota.
    pub(super) fn share(&self) -> u32 {
        self.0.first().map_or(0, Local::share)
    }

    pub(super) fn len(&self) -> usize {
        self.0.iter().map(Local::len).sum()
    }

    pub(super) fn bytes(&self) -> usize {
        self.0.iter().map(Local::bytes).sum()
    }

    fn decide_now(&self, key: &str, n: NonZeroU32) -> Decision {
        let mut tiers = self.0.iter();
        let Some(first) = tiers.next() else {
            return Decision::blocked(0, Duration::ZERO);
        };
        let mut answer = first.decide_now(key, n);
        if !answer.allowed {
            return answer;
        }
        for (i, tier) in tiers.enumerate() {
            let d = tier.decide_now(key, n);
            if !d.allowed {
                for earlier in &self.0[..=i] {
                    earlier.adjust(key, Control::Refund(n));
                }
                return d;
            }
            if d.remaining < answer.remaining {
                answer = d;
            }
        }
        answer
    }

    /// The peek of every quota: the refusal that lasts longest, else the fewest units left.
    fn peek(&self, key: &str) -> Decision {
        let mut answer: Option<Decision> = None;
        for d in self.0.iter().map(|tier| tier.peek(key)) {
            let binds = match &answer {
                None => true,
                Some(a) if a.allowed => !d.allowed || d.remaining < a.remaining,
                Some(a) => !d.allowed && d.retry_after > a.retry_after,
            };
            if binds {
                answer = Some(d);
            }
        }
        answer.unwrap_or_else(|| Decision::blocked(0, Duration::ZERO))
    }
}

impl Controlled for LocalSet {
    async fn control(&self, key: &str, op: Control) -> Result<Decision, Infallible> {
        for tier in &self.0 {
            tier.adjust(key, op);
        }
        Ok(self.peek(key))
    }
}

impl Decider for LocalSet {
    /// The local tier always answers.
    type Error = Infallible;

    // Decided when polled: a few instructions cheaper per check than `ready(..)`, which moves
    // the decision through an `Option` (callgrind on the local-decision bench).
    async fn decide(&self, key: &str, n: NonZeroU32) -> Result<Decision, Infallible> {
        Ok(self.decide_now(key, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn local(limit: u32, window_ms: u64, strict: bool, clock: &ManualClock) -> Local {
        let quota = Quota::new(limit, Duration::from_millis(window_ms)).unwrap();
        let share = NonZeroU32::new(limit).unwrap();
        Local::new(
            quota,
            share,
            1_000,
            strict,
            &SharedClock::new(clock.clone()),
        )
    }

    fn allowed(local: &Local, key: &str, times: u32) -> u32 {
        (0..times)
            .map(|_| u32::from(local.decide_now(key, NonZeroU32::MIN).allowed))
            .sum()
    }

    #[test]
    fn strict_shares_burst_half_and_refill_the_rest_over_two_windows() {
        let clock = ManualClock::new();
        let local = local(10, 1_000, true, &clock);
        assert_eq!(allowed(&local, "k", 20), 5);
        // One unit per 200 ms: the other half of the share over the window.
        clock.advance(Duration::from_millis(199));
        assert_eq!(allowed(&local, "k", 20), 0);
        clock.advance(Duration::from_millis(1));
        assert_eq!(allowed(&local, "k", 20), 1);
        clock.advance(Duration::from_millis(800));
        assert_eq!(allowed(&local, "k", 20), 4);
    }

    #[test]
    fn embedded_bursts_the_whole_share_and_refills_it_over_one_window() {
        let clock = ManualClock::new();
        let local = local(10, 1_000, false, &clock);
        let first = local.decide_now("k", NonZeroU32::MIN);
        assert_eq!(
            (first.remaining, first.reset_after),
            (9, Duration::from_millis(100))
        );
        assert_eq!(allowed(&local, "k", 20), 9);
        let refused = local.decide_now("k", NonZeroU32::MIN);
        assert_eq!(refused.retry_after, Some(Duration::from_millis(100)));
        clock.advance(Duration::from_millis(1_000));
        assert_eq!(allowed(&local, "k", 20), 10);
    }

    #[test]
    fn more_units_than_the_burst_are_never_allowed() {
        let clock = ManualClock::new();
        let local = local(10, 1_000, true, &clock);
        let d = local.decide_now("k", NonZeroU32::new(6).unwrap());
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(Duration::from_secs(1)));
        // It spent nothing.
        assert_eq!(allowed(&local, "k", 20), 5);
    }

    #[test]
    fn a_bucket_is_picked_within_the_bound() {
        let clock = ManualClock::new();
        for buckets in [1, 2, 7, 1_000] {
            let quota = Quota::new(1, Duration::from_secs(1)).unwrap();
            let l = Local::new(
                quota,
                NonZeroU32::MIN,
                buckets,
                false,
                &SharedClock::new(clock.clone()),
            );
            for i in 0..1_000 {
                let hash = l.hasher.hash_one(format!("key{i}"));
                assert!(l.maps.bucket(hash) < buckets);
            }
        }
    }

    #[test]
    fn a_flood_of_new_keys_never_spends_an_active_keys_budget() {
        let clock = ManualClock::new();
        let quota = Quota::new(4, Duration::from_secs(60)).unwrap();
        let l = Local::new(
            quota,
            NonZeroU32::new(4).unwrap(),
            100,
            false,
            &SharedClock::new(clock.clone()),
        );
        assert_eq!(allowed(&l, "victim", 1), 1);
        for i in 0..10_000 {
            allowed(&l, &format!("flood{i}"), 5);
        }
        // Memory stays bounded: the exact states and the shared buckets.
        assert!(l.len() <= 200, "{} states", l.len());
        assert_eq!(allowed(&l, "victim", 10), 3);
        // Once the flood is idle its states go, and new keys get their own again.
        clock.advance(Duration::from_secs(120));
        assert_eq!(allowed(&l, "late", 10), 4);
        assert!(l.maps.exact.contains_key(&l.hasher.hash_one("late")));
    }
}
