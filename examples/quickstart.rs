//! tierkit's first run: caches "events" and "user profiles" in front of a (fake, slow)
//! database with `get_or_set`, then prints where each read came from and the hit/miss stats.
//!
//! Runs on the embedded default with no Redis at all; set `REDIS_URL` (or `REDIS_HOST`, ...) to
//! put Redis behind the in-process tier:
//!
//! ```sh
//! cargo run --example quickstart
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example quickstart
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tierkit::health::HealthState;
use tierkit::Tierkit;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Event {
    id: u64,
    title: String,
    attendees: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    friends: Vec<u64>,
}

/// Stands in for the service's database: slow, and counts its queries. A loader may run past
/// the call that started it (a soft timeout, an eager refresh), so it owns what it uses: here
/// a `'static` database; in a service, a cloned pool handle.
struct Database {
    queries: AtomicU64,
}

static DB: Database = Database {
    queries: AtomicU64::new(0),
};

impl Database {
    async fn event(&self, id: u64) -> Result<Event, std::io::Error> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(Event {
            id,
            title: format!("Meetup #{id}"),
            attendees: (0..id * 10).collect(),
        })
    }

    async fn profile(&self, id: u64) -> Result<Profile, std::io::Error> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(Profile {
            id,
            name: format!("user-{id}"),
            friends: (id..id + 20).collect(),
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> tierkit::Result<()> {
    let kit = Tierkit::from_env()?;
    match kit.health() {
        None => println!("embedded mode: no Redis configured, L1-only cache in this process"),
        Some(health) => {
            // Up, or a setting Redis refuses (a password, a database): no need to wait longer.
            let mut changes = health.subscribe();
            let settled =
                changes.wait_for(|s| s.state == HealthState::Up || s.misconfigured.is_some());
            let _ = tokio::time::timeout(Duration::from_secs(2), settled).await;
            let status = health.status();
            match (&status.misconfigured, status.state) {
                (Some(problem), state) => println!(
                    "redis: {state}: configuration error ({}): {}",
                    problem.kind, problem.fix
                ),
                (None, HealthState::Up) => println!("redis: up (ping {:?})", status.latency),
                (None, state) => println!(
                    "redis: {state} ({}); serving from the in-process tier",
                    status.last_error.as_deref().unwrap_or("no answer yet")
                ),
            }
        }
    }

    let events = kit
        .namespace::<Event>("events")
        .ttl(Duration::from_secs(30 * 60))
        .build()?;
    let profiles = kit
        .namespace::<Profile>("profiles")
        .ttl(Duration::from_secs(60 * 60))
        .l1_ttl(Duration::from_secs(60))
        .build()?;
    let db = &DB;

    // A small, skewed workload: a few hot events and profiles read over and over.
    let started = Instant::now();
    for round in 0..50u64 {
        let id = round % 5;
        let event = events
            .get_or_set(&id.to_string(), move || DB.event(id))
            .await?;
        let profile = profiles
            .get_or_set(&(id + 100).to_string(), move || DB.profile(id + 100))
            .await?;
        if round < 6 {
            println!(
                "round {round}: event {:?} from {:?}, profile {:?} from {:?}",
                event.title,
                event.source(),
                profile.name,
                profile.source()
            );
        }
    }
    let queries = db.queries.load(Ordering::Relaxed);
    println!(
        "50 rounds in {:?}; the database was queried {queries} times",
        started.elapsed()
    );
    // Ten keys, each loaded once at most (none, when a Redis already holds them).
    assert!(queries <= 10, "{queries} queries for 10 keys");
    if kit.is_embedded() {
        assert_eq!(queries, 10);
    }

    // An update: write-through, and every other instance drops its L1 copy.
    let mut changed = (*events.get_or_set("1", || DB.event(1)).await?).clone();
    changed.title = "Meetup #1 (moved)".into();
    events.set("1", changed).await?;
    let title = events.get("1").await.map(|e| e.title.clone());
    println!("after update: {title:?}");
    assert_eq!(title.as_deref(), Some("Meetup #1 (moved)"));

    let info = kit.cache_info().await;
    assert_eq!(info.namespaces.len(), 2);
    for (name, s) in &info.namespaces {
        println!(
            "{name:>9}: L1 hits {:>3}, L2 hits {:>3}, misses {:>3}, hit ratio {:.0}%, {} bytes stored",
            s.l1_hits,
            s.l2_hits,
            s.misses,
            s.hit_ratio() * 100.0,
            s.stored_bytes
        );
    }
    println!(
        "L1: {} entries, {} bytes; redis keys: {:?}",
        info.l1_entries, info.l1_bytes, info.redis_keys
    );
    Ok(())
}
