//! The series store and the Prometheus text format (version 0.0.4) that `/metrics` serves.
//!
//! Every value is one atomic word, so recording never locks and a series costs 8 bytes (a histogram one
//! word per bucket). The writer follows the format the `prometheus` crate wrote before: families sorted by
//! name, label values escaped, `le` last on a bucket, `+Inf` spelled so.

use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing count.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The bits of a gauge that was never set: a NaN no arithmetic produces, so "unset" needs no second word.
const UNSET: u64 = u64::MAX;

/// A value that goes up and down, absent from the exposition until it is first set.
pub struct Gauge(AtomicU64);

impl Default for Gauge {
    fn default() -> Self {
        Gauge(AtomicU64::new(UNSET))
    }
}

impl Gauge {
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<f64> {
        let bits = self.0.load(Ordering::Relaxed);
        (bits != UNSET).then(|| f64::from_bits(bits))
    }

    /// Sets `value` unless the gauge already holds a larger one.
    pub fn raise(&self, value: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                (bits == UNSET || f64::from_bits(bits) < value).then(|| value.to_bits())
            });
    }
}

/// Observations counted into fixed buckets; rendered cumulatively, as the format wants.
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, then the observations above the last bound.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds ascend");
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub fn observe(&self, value: f64) {
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// What a family is, for its `# TYPE` line.
#[derive(Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Writes one family's `# HELP` and `# TYPE` lines.
pub fn header(out: &mut String, name: &str, help: &str, kind: Kind) {
    let kind = match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    };
    let _ = writeln!(out, "# HELP {name} {}", escape(help, false));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one sample line: `name{label="value",…} value`.
pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl Display) {
    out.push_str(name);
    labels_text(out, labels, None);
    let _ = writeln!(out, " {value}");
}

/// Writes a histogram's buckets, sum and count under `labels`.
pub fn histogram(out: &mut String, name: &str, labels: &[(&str, &str)], h: &Histogram) {
    let mut cumulative = 0;
    for (i, count) in h.counts.iter().enumerate() {
        cumulative += count.load(Ordering::Relaxed);
        let le = match h.bounds.get(i) {
            Some(bound) => bound.to_string(),
            None => "+Inf".to_owned(),
        };
        out.push_str(name);
        out.push_str("_bucket");
        labels_text(out, labels, Some(("le", &le)));
        let _ = writeln!(out, " {cumulative}");
    }
    let sum = f64::from_bits(h.sum.load(Ordering::Relaxed));
    sample(out, &format!("{name}_sum"), labels, sum);
    sample(out, &format!("{name}_count"), labels, cumulative);
}

fn labels_text(out: &mut String, labels: &[(&str, &str)], last: Option<(&str, &str)>) {
    let mut separator = '{';
    for (name, value) in labels.iter().chain(last.as_ref()) {
        out.push(separator);
        let _ = write!(out, "{name}=\"{}\"", escape(value, true));
        separator = ',';
    }
    if separator == ',' {
        out.push('}');
    }
}

/// Backslash and newline escaped, and the double quote too inside a label value.
fn escape(text: &str, quote: bool) -> std::borrow::Cow<'_, str> {
    let needs_escape = text.contains(['\\', '\n']) || (quote && text.contains('"'));
    if !needs_escape {
        return text.into();
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '"' if quote => escaped.push_str("\\\""),
            c => escaped.push(c),
        }
    }
    escaped.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_le_last() {
        let h = Histogram::new(&[0.25, 1.0]);
        for v in [0.125, 0.25, 0.5, 7.0] {
            h.observe(v);
        }
        let mut out = String::new();
        histogram(&mut out, "d", &[("application", "a")], &h);
        assert_eq!(
            out,
            "d_bucket{application=\"a\",le=\"0.25\"} 2\n\
             d_bucket{application=\"a\",le=\"1\"} 3\n\
             d_bucket{application=\"a\",le=\"+Inf\"} 4\n\
             d_sum{application=\"a\"} 7.875\n\
             d_count{application=\"a\"} 4\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        sample(&mut out, "m", &[("sha256", "a\"b\\c\nd")], 1);
        sample(&mut out, "n", &[], 2);
        assert_eq!(out, "m{sha256=\"a\\\"b\\\\c\\nd\"} 1\nn 2\n");
    }

    #[test]
    fn a_gauge_is_absent_until_set_and_raise_only_moves_up() {
        let g = Gauge::default();
        assert_eq!(g.get(), None);
        g.raise(5.0);
        g.raise(3.0);
        assert_eq!(g.get(), Some(5.0));
        g.set(0.0);
        assert_eq!(g.get(), Some(0.0));
    }
}
