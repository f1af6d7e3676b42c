//! SVG latency percentile curves (one line per target) with `plotters`. The x axis is in "nines"
//! (-log10(1 - p/100): 1 = p90, 2 = p99, 3 = p99.9) so the tail gets as much room as the median.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_axis() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert!(nines(100.0).is_finite());
    }
}
