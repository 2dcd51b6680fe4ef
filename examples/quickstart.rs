//! tierkit's first run: starts on the embedded default (no Redis needed), or against Redis
//! when `REDIS_URL` (or `REDIS_HOST`...) is set, and shows what it is doing.
//!
//! ```sh
//! cargo run --example quickstart
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example quickstart
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tierkit::health::HealthState;
use tierkit::Tierkit;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Event {
    id: u64,
    title: String,
    attendees: Vec<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> tierkit::Result<()> {
    let kit = Tierkit::from_env()?;
    println!("config: {:?}", kit.config());

    let event = Event {
        id: 1,
        title: "Rust meetup".into(),
        attendees: (0..200).map(|i| format!("user-{i}")).collect(),
    };
    let (bytes, info) = kit.codec().encode_with_info(&event)?;
    println!(
        "event encoded: {} body bytes stored in {} (compressed: {})",
        info.body_len, info.stored_len, info.compressed
    );
    let back: Event = kit.codec().decode(&bytes)?;
    assert_eq!(back, event);

    match kit.health() {
        None => println!("embedded mode: no Redis configured, everything runs in-process"),
        Some(health) => {
            let up = health
                .wait_for(HealthState::Up, Duration::from_secs(2))
                .await;
            println!(
                "redis: {} (up: {up}, latency {:?})",
                health.state(),
                health.latency()
            );
            if let Some(conn) = kit.conn().filter(|_| up) {
                let key = format!("{}:quickstart:event:1", kit.config().prefix());
                conn.query::<()>(redis::cmd("SET").arg(&key).arg(&bytes).arg("EX").arg(60))
                    .await?;
                let stored: Vec<u8> = conn.query(redis::cmd("GET").arg(&key)).await?;
                let from_redis: Event = kit.codec().decode(&stored)?;
                println!("round trip through Redis: {}", from_redis.title);
            }
        }
    }
    Ok(())
}
