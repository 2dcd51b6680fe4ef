//! tierkit's benches. Every group holds tierkit next to the raw building block it is compared
//! with (moka, redis-rs), on the same data and in the same run, so the ratio is read off one
//! report. Each group runs on a current-thread and on a 2-worker multi-thread runtime.
//!
//! ```sh
//! cargo bench --bench tierkit            # everything
//! cargo bench --bench tierkit -- l1_hit  # one group
//! ```
//!
//! The workload harness (throughput, tail latency and hit ratios under a zipf load, outages,
//! a peer comparison) is the `tierkit-loadgen` crate in `loadgen/`.
//!
//! The Redis groups start their own `redis-server` through the test harness.

#[path = "../../tests/support/mod.rs"]
mod support;

mod cache;
mod codec;
mod ratelimit;
mod session;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tokio::runtime::{Builder, Runtime};

/// The two runtimes every group is measured on: on 2 cores a multi-thread runtime alone can
/// double one request's latency (cross-thread wake-ups).
pub fn runtimes() -> Vec<(&'static str, Runtime)> {
    let current = Builder::new_current_thread().enable_all().build();
    let multi = Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    vec![
        ("current_thread", current.expect("current-thread runtime")),
        ("multi_thread", multi.expect("multi-thread runtime")),
    ]
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = cache::l1_hit, cache::l1_hit_parallel, cache::l1_hit_resilience, cache::l2_hit, cache::get_or_set_cold, cache::set, cache::coherence, cache::get_many,
        cache::down_read, codec::context_reuse, codec::encryption, ratelimit::redis_decision,
        ratelimit::redis_decision_64_tasks, ratelimit::local_decision, session::validate
}
criterion_main!(benches);
