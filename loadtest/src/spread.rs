//! Median, min and max of a figure over rounds: one round is an anecdote, the spread says how far to trust the
//! median.

/// The median of `v` (mean of the middle two for an even count); sorts `v`. `None` when empty.
pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// A figure over rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub rounds: usize,
}

impl Spread {
    /// The spread of the finite values; `None` when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        let median = median(&mut v)?;
        Some(Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
            rounds: v.len(),
        })
    }

    /// `14912 (14500–15100)`: the median with min–max when more than one round; `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        if self.rounds <= 1 {
            return format!("{:.digits$}", self.median);
        }
        format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            self.median, self.min, self.max
        )
    }
}

/// [`Spread::show`] or `-` when there is no figure.
pub fn show(s: Option<Spread>, digits: usize) -> String {
    s.map_or("-".into(), |s| s.show(digits))
}

/// A ratio spread as `0.40x` or `0.40x (0.38–0.41)`, or `-` when there is no figure.
pub fn show_x(s: Option<Spread>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s.rounds <= 1 => format!("{:.2}x", s.median),
        Some(s) => format!("{:.2}x ({:.2}–{:.2})", s.median, s.min, s.max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn spread_and_its_text() {
        let s = Spread::of([15100.0, 14500.0, 14912.0]).unwrap();
        assert_eq!(
            (s.median, s.min, s.max, s.rounds),
            (14912.0, 14500.0, 15100.0, 3)
        );
        assert_eq!(s.show(0), "14912 (14500–15100)");
        assert_eq!(Spread::of([0.25]).unwrap().show(2), "0.25");
        assert_eq!(Spread::of([f64::NAN, 1.0]).unwrap().rounds, 1);
        assert_eq!(show(Spread::of([]), 1), "-");
    }
}
