//! The text report: a settings line, then per backend a table of phases, one of namespaces,
//! Redis's figures and the health transitions.

use std::fmt;

use super::Report;

/// The report as a person reads it; `--json` prints the `Report` itself instead.
pub struct Text<'a>(pub &'a Report);

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        let s = &r.settings;
        writeln!(
            f,
            "loadgen: {:?}{}, {} keys (zipf {}), pages {} B ({:.0}% repetitive), {:.0}% reads, \
             {} instance(s), {} tasks{}, loader {} µs; Redis: {}",
            s.duration,
            if s.warmup.is_zero() {
                String::new()
            } else {
                format!(" after a {:?} warm-up", s.warmup)
            },
            s.keys,
            s.skew,
            s.value_size,
            s.compressible * 100.0,
            s.read_ratio * 100.0,
            s.instances,
            s.concurrency,
            s.rate
                .map_or_else(String::new, |r| format!(" at {r} ops/s (open loop)")),
            s.load_latency_us,
            r.redis
        )?;
        for run in &r.runs {
            writeln!(f, "\n== {} ==", run.backend)?;
            if let Some(o) = run.outage {
                writeln!(
                    f,
                    "outage: Redis gone at {} ms, answering again at {} ms",
                    o.down_at_ms, o.back_at_ms
                )?;
            }
            writeln!(
                f,
                "{:<7} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} | {:>6} {:>6} {:>6} | {:>7} {:>7} {:>7}",
                "phase",
                "ops",
                "ops/s",
                "p50 µs",
                "p99 µs",
                "p999 µs",
                "max µs",
                "L1",
                "L2",
                "loader",
                "writes",
                "L1-only",
                "errors"
            )?;
            for p in &run.phases {
                writeln!(
                    f,
                    "{:<7} {:>9} {:>9.0} {:>8} {:>8} {:>8} {:>8} | {:>5.1}% {:>5.1}% {:>5.1}% | {:>7} {:>7} {:>7}",
                    p.name,
                    p.ops,
                    p.ops_per_sec,
                    p.latency.p50_us,
                    p.latency.p99_us,
                    p.latency.p999_us,
                    p.latency.max_us,
                    p.l1_ratio * 100.0,
                    p.l2_ratio * 100.0,
                    p.loader_ratio * 100.0,
                    p.writes,
                    p.writes_l1_only,
                    p.errors
                )?;
                if let Some(l1) = &p.l1_read {
                    writeln!(
                        f,
                        "        L1-answered reads: p50 {} ns, p99 {} ns, mean {:.0} ns",
                        l1.p50_ns, l1.p99_ns, l1.mean_ns
                    )?;
                }
                if let (Some(e), Some(s)) = (p.l2_errors, p.l2_skipped) {
                    writeln!(
                        f,
                        "        tierkit: {e} Redis calls failed or timed out, {s} skipped while Down"
                    )?;
                }
            }
            if !run.namespaces.is_empty() {
                writeln!(
                    f,
                    "{:<9} {:>9} {:>12} {:>12} {:>12} {:>8} {:>12} {:>12}",
                    "namespace",
                    "hit ratio",
                    "encoded B",
                    "stored B",
                    "saved B",
                    "stored",
                    "encode ms",
                    "ns per KiB"
                )?;
                for n in &run.namespaces {
                    writeln!(
                        f,
                        "{:<9} {:>8.1}% {:>12} {:>12} {:>12} {:>7.1}% {:>12.1} {:>12.0}",
                        n.name,
                        n.hit_ratio * 100.0,
                        n.stats.encoded_bytes,
                        n.stats.stored_bytes,
                        n.bytes_saved,
                        n.stored_ratio * 100.0,
                        n.encode_cpu_ms,
                        n.encode_ns_per_kib
                    )?;
                }
            }
            match (run.redis_used_memory, run.redis_keys) {
                (Some(m), Some(k)) => writeln!(
                    f,
                    "Redis after the run: {k} keys, used_memory {:.1} MiB",
                    m as f64 / (1024.0 * 1024.0)
                )?,
                _ if r.settings.embedded => {}
                _ => writeln!(f, "Redis after the run: no answer")?,
            }
            if let (Some(per_op), Some(share)) = (run.redis_cpu_us_per_op, run.redis_cpu_share) {
                writeln!(
                    f,
                    "Redis CPU while measured: {per_op:.2} µs per operation, {:.0}% of a core",
                    share * 100.0
                )?;
            }
            if run.health.len() > 1 {
                let states: Vec<String> = run
                    .health
                    .iter()
                    .map(|c| format!("{} at {} ms", c.state, c.at_ms))
                    .collect();
                writeln!(f, "health: {}", states.join(", "))?;
            }
        }
        Ok(())
    }
}
