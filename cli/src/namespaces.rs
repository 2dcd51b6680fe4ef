//! `tierkit namespaces`: keys and memory per cache namespace, the session store and each
//! limiter, from one `SCAN` of the prefix (every primary of a cluster) and a sampled
//! `MEMORY USAGE`.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::json;
use tierkit::cache::admin::{self, CacheKey};
use tierkit::Tierkit;

use crate::args::NamespacesArgs;
use crate::output::{self, Failure, Report};

/// One group of keys: a cache namespace, the sessions, a limiter, or the rest.
#[derive(Default)]
struct Group {
    keys: u64,
    /// Keys by what they are (entries, epochs, tags, leases; sessions, indexes, ...).
    parts: BTreeMap<&'static str, u64>,
    /// Cache namespace versions seen.
    versions: std::collections::BTreeSet<u32>,
    /// A uniform sample of the group's keys (reservoir sampling).
    sample: Vec<String>,
}

impl Group {
    fn add(&mut self, key: &str, part: &'static str, samples: usize, rng: &mut fastrand::Rng) {
        self.keys += 1;
        *self.parts.entry(part).or_default() += 1;
        if self.sample.len() < samples {
            self.sample.push(key.to_owned());
        } else if samples > 0 {
            let slot = rng.u64(0..self.keys) as usize;
            if let Some(s) = self.sample.get_mut(slot) {
                *s = key.to_owned();
            }
        }
    }
}

/// The group (kind, name) and part of a key under `prefix`.
fn classify(prefix: &str, key: &str) -> ((&'static str, String), &'static str, Option<u32>) {
    if let Some(cache) = admin::parse_key(prefix, key) {
        let ns = cache.namespace().unwrap_or("-").to_owned();
        let (part, version) = match cache {
            CacheKey::Entry { version, .. } => ("entries", Some(version)),
            CacheKey::Epoch { version, .. } => ("epochs", Some(version)),
            CacheKey::TagEpoch { version, .. } => ("tags", Some(version)),
            CacheKey::Lease { version, .. } => ("leases", Some(version)),
            _ => ("other", None),
        };
        return (("cache", ns), part, version);
    }
    let rest = key
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix(':'))
        .unwrap_or(key);
    if let Some(s) = rest.strip_prefix("s:") {
        let part = if s == "users" {
            "users"
        } else if s == "counts" {
            "counts"
        } else if s.contains("}:sess:") {
            "sessions"
        } else if s.contains("}:idx:") {
            "indexes"
        } else if s.contains("}:rt:") {
            "refreshTokens"
        } else {
            "other"
        };
        return (("sessions", "-".into()), part, None);
    }
    if let Some(rl) = rest.strip_prefix("rl:") {
        let mut it = rl.splitn(3, ':');
        let name = it.next().unwrap_or("-").to_owned();
        let part = match it.next() {
            Some("log") => "slidingLog",
            Some("ctr") => "slidingCounter",
            _ => "other",
        };
        return (("limiter", name), part, None);
    }
    (("other", "-".into()), "other", None)
}

pub async fn run(kit: &Tierkit, args: &NamespacesArgs, progress: bool) -> Result<Report, Failure> {
    let conn = kit.conn().ok_or_else(|| Failure::new("no Redis"))?;
    let prefix = kit.config().prefix().to_owned();
    let glob = format!("{prefix}:*");
    let mut groups: BTreeMap<(&'static str, String), Group> = BTreeMap::new();
    let mut rng = fastrand::Rng::new();
    let bar = output::progress(progress, None, "scanning");
    let mut scanned = 0u64;
    // SCAN may return a key twice when the keyspace is resized meanwhile; counts are then a
    // little high. Keeping every key to count each once would hold the whole keyspace here.
    let walked = admin::scan(conn, &glob, args.count as usize, |keys| {
        for key in keys {
            scanned += 1;
            let (group, part, version) = classify(&prefix, &key);
            let g = groups.entry(group).or_default();
            g.add(&key, part, args.samples, &mut rng);
            g.versions.extend(version);
        }
        bar.set_position(scanned);
    })
    .await;
    bar.finish_and_clear();
    walked.map_err(|e| Failure::new(format!("SCAN failed: {e}")))?;

    let total_samples: usize = groups.values().map(|g| g.sample.len()).sum();
    let bar = output::progress(progress, Some(total_samples as u64), "sampling memory");
    let mut rows = Vec::new();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{:<9} {:<24} {:>10} {:>12}  parts",
        "kind", "name", "keys", "memory~"
    );
    for ((kind, name), g) in &groups {
        let mut sampled = 0u64;
        let mut sampled_bytes = 0u64;
        for key in &g.sample {
            // A key gone since the scan has no usage; skip it.
            if let Ok(Some(bytes)) = admin::memory_usage(conn, key).await {
                sampled += 1;
                sampled_bytes += bytes;
            }
            bar.inc(1);
        }
        let estimated = (sampled > 0)
            .then(|| (sampled_bytes as f64 / sampled as f64 * g.keys as f64).round() as u64);
        rows.push(json!({
            "kind": kind,
            "name": name,
            "keys": g.keys,
            "parts": g.parts,
            "versions": g.versions,
            "sampled": sampled,
            "sampledBytes": sampled_bytes,
            "estimatedBytes": estimated,
        }));
        let parts: Vec<String> = g.parts.iter().map(|(p, n)| format!("{p} {n}")).collect();
        let _ = writeln!(
            text,
            "{:<9} {:<24} {:>10} {:>12}  {}",
            kind,
            name,
            g.keys,
            estimated.map_or_else(|| "-".into(), output::bytes),
            parts.join(", ")
        );
    }
    bar.finish_and_clear();
    if groups.is_empty() {
        let _ = writeln!(text, "(no key under {prefix}:)");
    }
    let json = json!({
        "prefix": prefix,
        "cluster": conn.is_cluster(),
        "keys": scanned,
        "namespaces": rows,
    });
    Ok(Report::new(json, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_fall_into_their_groups() {
        let c = |k: &str| classify("tk", k);
        assert_eq!(
            c("tk:c:users:v2:42"),
            (("cache", "users".into()), "entries", Some(2))
        );
        assert_eq!(
            c("tk:c:users:g1:t"),
            (("cache", "users".into()), "tags", Some(1))
        );
        assert_eq!(
            c("tk:s:{ab}:sess:ff"),
            (("sessions", "-".into()), "sessions", None)
        );
        assert_eq!(c("tk:s:users"), (("sessions", "-".into()), "users", None));
        assert_eq!(
            c("tk:rl:login:log:ip:1"),
            (("limiter", "login".into()), "slidingLog", None)
        );
        assert_eq!(c("tk:zz"), (("other", "-".into()), "other", None));
    }
}
