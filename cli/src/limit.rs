//! `tierkit limit peek|reset LIMITER KEY`: through the library's limiter, so the window is
//! read and reset by the same scripts and keys the service uses.

use std::time::Duration;

use serde_json::json;
use tierkit::ratelimit::{Algorithm, Limiter, Quota, Tier};
use tierkit::Tierkit;

use crate::args::{Algo, LimitCmd};
use crate::output::{Failure, Report};

fn algorithm(a: Algo) -> Algorithm {
    match a {
        Algo::Log => Algorithm::SlidingLog,
        Algo::Counter => Algorithm::SlidingCounter,
        Algo::Pipelined => Algorithm::PipelinedCounter,
    }
}

fn limiter(kit: &Tierkit, name: &str, quota: Quota, algo: Algo) -> Result<Limiter, Failure> {
    kit.limiter(name, quota)
        .algorithm(algorithm(algo))
        .build()
        .map_err(Failure::from)
}

pub async fn run(kit: &Tierkit, cmd: LimitCmd) -> Result<Report, Failure> {
    match cmd {
        LimitCmd::Peek {
            limiter: name,
            key,
            limit,
            window,
            algorithm: algo,
        } => {
            let quota = Quota::new(limit, window)?;
            let decision = limiter(kit, &name, quota, algo)?.peek(&key).await;
            // Only Redis's answer says what is stored; a local one knows this process only.
            if decision.tier != Tier::Redis {
                return Err(Failure::new(
                    "Redis did not answer the peek (the limiter fell back to this process's local tier)",
                ));
            }
            let used = decision.limit.saturating_sub(decision.remaining);
            let mut json =
                serde_json::to_value(&decision).map_err(|e| Failure::new(e.to_string()))?;
            json["limiter"] = name.clone().into();
            json["key"] = key.clone().into();
            json["used"] = used.into();
            let text = format!(
                "{name} {key:?}: {used} used, {} of {} left; window resets in {} ms\n",
                decision.remaining,
                decision.limit,
                decision.reset_after.as_millis()
            );
            Ok(Report::new(json, text))
        }
        LimitCmd::Reset {
            limiter: name,
            key,
            algorithm: algo,
            window,
        } => {
            // The limit plays no part in a reset (a DEL of the window); the window names the
            // pipelined counter's keys.
            let quota = Quota::new(1, window.unwrap_or(Duration::from_secs(1)))?;
            let algos = match (algo, window) {
                (Some(Algo::Pipelined), None) => {
                    return Err(Failure::new(
                        "the pipelined counter's keys are named by the window: give --window",
                    ))
                }
                (Some(a), _) => vec![a],
                (None, None) => vec![Algo::Log, Algo::Counter],
                (None, Some(_)) => vec![Algo::Log, Algo::Counter, Algo::Pipelined],
            };
            let mut done = Vec::new();
            for a in algos {
                limiter(kit, &name, quota, a)?.reset(&key).await?;
                done.push(match a {
                    Algo::Log => "slidingLog",
                    Algo::Counter => "slidingCounter",
                    Algo::Pipelined => "pipelinedCounter",
                });
            }
            let json = json!({ "limiter": name, "key": key, "reset": done });
            let text = format!("{name} {key:?}: window reset ({})\n", done.join(", "));
            Ok(Report::new(json, text))
        }
    }
}
