//! SVG plots with `plotters`: latency percentile curves (one line per target; the x axis is in "nines",
//! -log10(1 - p/100): 1 = p90, 2 = p99, 3 = p99.9, so the tail gets as much room as the median) and latency vs
//! offered rate (p50 and p99 per target across the scenario's open-loop rates, log latency axis).

use std::path::Path;

use plotters::prelude::*;

use crate::report::RunResult;

#[derive(Debug, thiserror::Error)]
#[error("drawing {path}: {message}")]
pub struct PlotError {
    path: String,
    message: String,
}

/// Position of percentile `p` (0..100) on the x axis.
pub fn nines(p: f64) -> f64 {
    -(1.0 - p / 100.0).max(1e-6).log10()
}

/// Writes `results`' percentile curves to `path` as SVG.
pub fn percentile_curves(path: &Path, title: &str, results: &[RunResult]) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let max_ms = results
        .iter()
        .flat_map(|r| r.summary.curve.iter().map(|&(_, us)| us as f64 / 1000.0))
        .fold(0.1_f64, f64::max);
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(nines(50.0)..nines(99.999), 0.0..max_ms * 1.1)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile (nines: 1 = p90, 2 = p99, 3 = p99.9)")
        .y_desc("latency ms")
        .draw()
        .map_err(|e| err(&e))?;
    for (i, r) in results.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                r.summary
                    .curve
                    .iter()
                    .map(|&(p, us)| (nines(p), us as f64 / 1000.0)),
                color,
            ))
            .map_err(|e| err(&e))?
            .label(r.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// One target's (offered rate, p50 ms, p99 ms) points, by rate.
pub type RateSeries = (String, Vec<(f64, f64, f64)>);

/// (label, [(offered rate, p50 ms, p99 ms)]) per target from open-loop groups, in target order.
pub fn rate_series(groups: &[Vec<RunResult>]) -> Vec<RateSeries> {
    let mut series: Vec<RateSeries> = Vec::new();
    for g in groups {
        for r in g {
            let Some(rate) = r
                .mode
                .strip_prefix("open@")
                .and_then(|m| m.strip_suffix("rps"))
                .and_then(|m| m.parse::<f64>().ok())
            else {
                continue;
            };
            let point = (
                rate,
                r.summary.p50_us as f64 / 1000.0,
                r.summary.p99_us as f64 / 1000.0,
            );
            match series.iter_mut().find(|(l, _)| *l == r.label) {
                Some((_, pts)) => pts.push(point),
                None => series.push((r.label.clone(), vec![point])),
            }
        }
    }
    for (_, pts) in &mut series {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    series
}

/// Writes p50 (thin) and p99 (thick) latency against offered rate for every target to `path` as SVG.
pub fn latency_vs_rate(
    path: &Path,
    title: &str,
    groups: &[Vec<RunResult>],
) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let series = rate_series(groups);
    let pts = || series.iter().flat_map(|(_, p)| p.iter());
    let max_rate = pts().map(|p| p.0).fold(1.0_f64, f64::max);
    let min_rate = pts().map(|p| p.0).fold(max_rate, f64::min);
    let max_ms = pts().map(|p| p.2.max(p.1)).fold(0.1_f64, f64::max);
    let min_ms = pts()
        .map(|p| p.1.min(p.2))
        .fold(max_ms, f64::min)
        .max(0.001);
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (min_rate * 0.9)..(max_rate * 1.1),
            ((min_ms * 0.8)..(max_ms * 1.5)).log_scale(),
        )
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("offered rate (requests per second, open loop)")
        .y_desc("latency ms (log)")
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (label, p)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        for (name, width, pick) in [
            (
                "p50",
                1,
                (|x: &(f64, f64, f64)| x.1) as fn(&(f64, f64, f64)) -> f64,
            ),
            ("p99", 3, |x: &(f64, f64, f64)| x.2),
        ] {
            chart
                .draw_series(LineSeries::new(
                    p.iter().map(|x| (x.0, pick(x))),
                    color.stroke_width(width),
                ))
                .map_err(|e| err(&e))?
                .label(format!("{label} {name}"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
                });
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_axis() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert!(nines(100.0).is_finite());
    }

    #[test]
    fn rate_series_groups_open_loop_points_by_target() {
        use crate::report::SummaryRecord;
        let r = |label: &str, mode: &str, p50, p99| RunResult {
            label: label.into(),
            mode: mode.into(),
            round: 0,
            connections: 1,
            payload: 0,
            response_bytes: 0,
            protocol: "http1".into(),
            summary: SummaryRecord {
                requests: 1,
                errors: 0,
                achieved_rps: 1.0,
                p50_us: p50,
                p90_us: p99,
                p99_us: p99,
                p999_us: p99,
                max_us: p99,
                mean_us: 1.0,
                curve: vec![],
            },
            proxy: None,
        };
        let groups = vec![
            vec![
                r("a", "open@2000rps", 200, 900),
                r("b", "open@2000rps", 1, 2),
            ],
            vec![r("a", "open@500rps", 100, 400)],
            vec![r("a", "closed", 5, 5)],
        ];
        let s = rate_series(&groups);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].0, "a");
        assert_eq!(s[0].1, vec![(500.0, 0.1, 0.4), (2000.0, 0.2, 0.9)]);
        let dir = std::env::temp_dir().join(format!("tl-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let svg = dir.join("r.svg");
        latency_vs_rate(&svg, "t", &groups).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains("<svg") && text.contains("a p99"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
