//! `tierkit health`: the library's health report, seen from a fresh instance.

use std::fmt::Write;
use std::time::Duration;

use serde_json::Value;
use tierkit::health::HealthState;
use tierkit::Tierkit;

use crate::output::{Failure, Report};

/// Waits up to `wait` for Redis, then reports; exits nonzero (after printing the report) when
/// Redis is not up or slow.
pub async fn run(kit: &Tierkit, wait: Duration) -> Result<Report, Failure> {
    let up = kit.ready(wait).await;
    // With the session store's global counts when one can be built here (a store with
    // encryption keys needs the session name key too).
    let sessions = kit
        .sessions()
        // A one-shot process: its background sweep never needs to run.
        .sweep(Duration::from_secs(30 * 86_400), 1)
        .build();
    let report = match sessions {
        Ok(sessions) => kit.health_report_with(&sessions).await,
        Err(_) => kit.health_report().await,
    };
    let json = serde_json::to_value(&report).map_err(|e| Failure::new(e.to_string()))?;
    let mut text = String::new();
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let redis = &json["redis"];
    let _ = writeln!(text, "status      {}", s(&json["status"]));
    let _ = writeln!(
        text,
        "redis       {} (state {}, latency {} ms, for {} s)",
        s(&redis["status"]),
        s(&redis["state"]),
        s(&redis["latency"]),
        s(&redis["forSecs"])
    );
    if let Some(e) = redis.get("lastError") {
        let _ = writeln!(text, "last error  {}", s(e));
    }
    if let Some(Value::Array(shards)) = redis.get("unreachable") {
        for shard in shards {
            let _ = writeln!(text, "unreachable {shard}");
        }
    }
    let cache = &json["cache"];
    let _ = writeln!(
        text,
        "keys        {}\nmemory      {}\nbackplane   {}",
        s(&cache["totalKeys"]),
        s(&cache["memoryUsage"]),
        if cache["coherent"] == true {
            "subscribed"
        } else {
            "not subscribed"
        }
    );
    if let Some(sessions) = json.get("sessions") {
        let _ = writeln!(
            text,
            "sessions    {} active {}",
            s(&sessions["active"]),
            s(&sessions["byDevice"])
        );
    }
    let state = kit.health().map(|h| h.status().state);
    let mut out = Report::new(json, text);
    if !up && !matches!(state, Some(HealthState::Up | HealthState::Degraded)) {
        out.warn = Some(format!(
            "Redis is not up after {wait:?} (state {})",
            state.map_or("unknown", |s| match s {
                HealthState::Up => "up",
                HealthState::Degraded => "degraded",
                _ => "down",
            })
        ));
    }
    Ok(out)
}
