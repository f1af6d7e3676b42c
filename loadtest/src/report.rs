//! Reports: the Markdown table a person reads (percentiles, rate, ratios to a baseline row). Pure.

use crate::stats::Summary;

/// One named row.
#[derive(Debug, Clone)]
pub struct Row<'a> {
    pub name: &'a str,
    pub summary: &'a Summary,
}

/// A Markdown table; the first row is the baseline the ratios are taken against.
pub fn markdown(rows: &[Row<'_>]) -> String {
    let mut out = String::from(
        "| target | rps | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | rps vs baseline | p99 vs baseline |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    let base = rows.first().map(|r| r.summary);
    for r in rows {
        let s = r.summary;
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}x", a / b)
            } else {
                "-".into()
            }
        };
        let (rps_ratio, p99_ratio) = match base {
            Some(b) => (
                ratio(s.achieved_rps, b.achieved_rps),
                ratio(s.p99_ms, b.p99_ms),
            ),
            None => ("-".into(), "-".into()),
        };
        out.push_str(&format!(
            "| {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} |\n",
            r.name,
            s.achieved_rps,
            s.p50_ms,
            s.p90_ms,
            s.p99_ms,
            s.p999_ms,
            s.max_ms,
            s.errors,
            rps_ratio,
            p99_ratio
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Recorder;
    use std::time::Duration;

    #[test]
    fn table_with_ratios_to_the_first_row() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for _ in 0..100 {
            a.record_ok(Duration::from_millis(1));
            b.record_ok(Duration::from_millis(2));
        }
        let (sa, sb) = (
            a.summary(Duration::from_secs(1)),
            b.summary(Duration::from_secs(2)),
        );
        let md = markdown(&[
            Row {
                name: "direct",
                summary: &sa,
            },
            Row {
                name: "tollgate",
                summary: &sb,
            },
        ]);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(
            lines[2].starts_with("| direct | 100 | 1.000 |"),
            "{}",
            lines[2]
        );
        assert!(lines[2].ends_with("| 0 | 1.00x | 1.00x |"), "{}", lines[2]);
        assert!(
            lines[3].starts_with("| tollgate | 50 | 2.000 |"),
            "{}",
            lines[3]
        );
        assert!(lines[3].ends_with("| 0 | 0.50x | 2.00x |"), "{}", lines[3]);
    }
}
