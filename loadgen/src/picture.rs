//! `--svg`: a run's throughput and its p50/p99 latency over time, drawn with plotters (the
//! crate criterion draws its reports with). The warm-up and an outage are shaded, and tierkit's
//! health transitions are marked with the state they moved to.

use std::path::Path;

use plotters::prelude::*;

use crate::report::RunReport;
use crate::Result;

const WARMUP: RGBColor = RGBColor(225, 225, 225);
const OUTAGE: RGBColor = RGBColor(255, 205, 205);
const P50: RGBColor = RGBColor(31, 119, 180);
const P99: RGBColor = RGBColor(214, 39, 40);
const HEALTH: RGBColor = RGBColor(110, 110, 110);

/// Draws `run` (its timeline must be filled) into an SVG file at `path`.
pub fn draw(run: &RunReport, warmup_s: f64, title: &str, path: &Path) -> Result<()> {
    let points = &run.timeline;
    let end_s = points.last().map_or(1.0, |p| p.at_s) + bucket_s(run);
    let root = SVGBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let (upper, lower) = root.split_vertically(290);

    let top = points.iter().map(|p| p.ops_per_sec).fold(1.0, f64::max) * 1.1;
    let mut ops = ChartBuilder::on(&upper)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..end_s, 0f64..top)?;
    ops.configure_mesh()
        .y_desc("ops/s")
        .x_desc("seconds")
        .x_label_formatter(&|s| format!("{s:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(WHITE)
        .draw()?;
    shade(&mut ops, run, warmup_s, (0.0, top))?;
    ops.draw_series(LineSeries::new(
        points.iter().map(|p| (p.at_s, p.ops_per_sec)),
        BLACK.stroke_width(2),
    ))?
    .label("throughput")
    .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK.stroke_width(2)));
    marks(&mut ops, run, (0.0, top))?;
    ops.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    // Milliseconds on a log scale: an L1 hit's microseconds and an outage's timeouts both show.
    let ms = |us: u64| (us.max(1) as f64 / 1000.0).max(0.001);
    let slowest = points.iter().map(|p| ms(p.p99_us)).fold(1.0, f64::max) * 2.0;
    let mut lat = ChartBuilder::on(&lower)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..end_s, (0.001f64..slowest).log_scale())?;
    lat.configure_mesh()
        .y_desc("latency, ms")
        .x_desc("seconds")
        .x_label_formatter(&|s| format!("{s:.0}"))
        .y_label_formatter(&|v| format!("{v}"))
        .light_line_style(WHITE)
        .draw()?;
    shade(&mut lat, run, warmup_s, (0.001, slowest))?;
    let answered = || points.iter().filter(|p| p.ops_per_sec > 0.0);
    lat.draw_series(LineSeries::new(
        answered().map(|p| (p.at_s, ms(p.p50_us))),
        P50.stroke_width(2),
    ))?
    .label("p50")
    .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], P50.stroke_width(2)));
    lat.draw_series(LineSeries::new(
        answered().map(|p| (p.at_s, ms(p.p99_us))),
        P99.stroke_width(2),
    ))?
    .label("p99")
    .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], P99.stroke_width(2)));
    marks(&mut lat, run, (0.001, slowest))?;
    lat.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

type Chart<'a, Y> =
    ChartContext<'a, SVGBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>;

/// The warm-up and the outage, as bands behind the series.
fn shade<Y>(
    chart: &mut Chart<'_, Y>,
    run: &RunReport,
    warmup_s: f64,
    (lo, hi): (f64, f64),
) -> Result<()>
where
    Y: Ranged<ValueType = f64>,
{
    if warmup_s > 0.0 {
        chart
            .draw_series([Rectangle::new(
                [(0.0, lo), (warmup_s, hi)],
                WARMUP.mix(0.6).filled(),
            )])?
            .label("warm-up")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 18, y + 5)], WARMUP.filled()));
    }
    if let Some(o) = run.outage {
        let (down, back) = (o.down_at_ms as f64 / 1e3, o.back_at_ms as f64 / 1e3);
        chart
            .draw_series([Rectangle::new(
                [(down, lo), (back, hi)],
                OUTAGE.mix(0.6).filled(),
            )])?
            .label("Redis away")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 18, y + 5)], OUTAGE.filled()));
    }
    Ok(())
}

/// tierkit's health transitions: a line at each, named by the state it moved to.
fn marks<Y>(chart: &mut Chart<'_, Y>, run: &RunReport, (lo, hi): (f64, f64)) -> Result<()>
where
    Y: Ranged<ValueType = f64>,
{
    for change in run.health.iter().skip(1) {
        let at = change.at_ms as f64 / 1e3;
        chart.draw_series([PathElement::new(
            [(at, lo), (at, hi)],
            HEALTH.stroke_width(1),
        )])?;
        chart.draw_series([Text::new(
            format!("{:?}", change.state).to_lowercase(),
            (at, hi),
            ("sans-serif", 13).into_font().color(&HEALTH),
        )])?;
    }
    Ok(())
}

fn bucket_s(run: &RunReport) -> f64 {
    match run.timeline.as_slice() {
        [a, b, ..] => b.at_s - a.at_s,
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use tierkit::health::HealthState;

    use super::*;
    use crate::report::{HealthChange, OutageTimes};
    use crate::timeline::Point;

    #[test]
    fn a_run_is_drawn_with_its_phases_and_transitions() {
        let timeline = (0..40)
            .map(|i| Point {
                at_s: f64::from(i) * 0.5,
                ops_per_sec: 20_000.0,
                errors: 0,
                p50_us: 3,
                p99_us: if (20..30).contains(&i) { 60_000 } else { 4_000 },
            })
            .collect();
        let run = RunReport {
            backend: "tierkit",
            phases: Vec::new(),
            timeline,
            namespaces: Vec::new(),
            redis_used_memory: None,
            redis_keys: None,
            redis_cpu_us_per_op: None,
            redis_cpu_share: None,
            health: vec![
                HealthChange {
                    at_ms: 0,
                    state: HealthState::Up,
                },
                HealthChange {
                    at_ms: 10_100,
                    state: HealthState::Down,
                },
            ],
            outage: Some(OutageTimes {
                down_at_ms: 10_000,
                back_at_ms: 15_000,
            }),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.svg");
        draw(&run, 5.0, "a test run", &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        for text in [
            "a test run",
            "warm-up",
            "Redis away",
            "throughput",
            "p50",
            "p99",
            "down",
        ] {
            assert!(svg.contains(text), "{text} is drawn");
        }
    }
}
