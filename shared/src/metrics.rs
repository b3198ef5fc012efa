//! Process metrics in Prometheus text format: counters and duration histograms, labelled only by
//! stage, outcome and op (bounded cardinality). Hosts render them on `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, OnceLock};

type Labels = Vec<(&'static str, String)>;

/// Upper bounds (seconds) of the duration histogram buckets.
const BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Registry {
    counters: BTreeMap<(&'static str, Labels), f64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
}

fn registry() -> &'static Mutex<Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(Mutex::default)
}

fn labels(l: &[(&'static str, &str)]) -> Labels {
    l.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// Adds `v` to a counter.
pub fn add(name: &'static str, l: &[(&'static str, &str)], v: f64) {
    let mut r = registry().lock().unwrap_or_else(|p| p.into_inner());
    *r.counters.entry((name, labels(l))).or_default() += v;
}

/// Records a duration in seconds.
pub fn observe(name: &'static str, l: &[(&'static str, &str)], secs: f64) {
    let mut r = registry().lock().unwrap_or_else(|p| p.into_inner());
    let h = r.histograms.entry((name, labels(l))).or_default();
    for (i, b) in BUCKETS.iter().enumerate() {
        if secs <= *b {
            h.counts[i] += 1;
        }
    }
    h.sum += secs;
    h.count += 1;
}

/// Label value escaping of the text format: backslash, double quote and line feed.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn fmt_labels(l: &Labels, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = l.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// A value read at scrape time (queue depth, lag…), rendered beside the process's own metrics.
#[derive(Debug, Clone)]
pub struct Gauge {
    /// Metric name.
    pub name: &'static str,
    /// Labels, bounded by the caller.
    pub labels: Labels,
    /// Value.
    pub value: f64,
}

impl Gauge {
    /// A gauge with labels.
    pub fn new(name: &'static str, l: &[(&'static str, &str)], value: f64) -> Gauge {
        Gauge {
            name,
            labels: labels(l),
            value,
        }
    }
}

/// Renders every metric, plus the given gauges, as Prometheus text.
pub fn render(gauges: &[Gauge]) -> String {
    let r = registry().lock().unwrap_or_else(|p| p.into_inner());
    let mut out = String::new();
    let mut last = "";
    for ((name, l), v) in &r.counters {
        if *name != last {
            let _ = writeln!(out, "# TYPE {name} counter");
            last = name;
        }
        let _ = writeln!(out, "{name}{} {v}", fmt_labels(l, None));
    }
    for ((name, l), h) in &r.histograms {
        if *name != last {
            let _ = writeln!(out, "# TYPE {name} histogram");
            last = name;
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{} {}",
                fmt_labels(l, Some(("le", b.to_string()))),
                h.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{} {}",
            fmt_labels(l, Some(("le", "+Inf".into()))),
            h.count
        );
        let _ = writeln!(out, "{name}_sum{} {}", fmt_labels(l, None), h.sum);
        let _ = writeln!(out, "{name}_count{} {}", fmt_labels(l, None), h.count);
    }
    let mut last = "";
    for g in gauges {
        if g.name != last {
            let _ = writeln!(out, "# TYPE {} gauge", g.name);
            last = g.name;
        }
        let _ = writeln!(out, "{}{} {}", g.name, fmt_labels(&g.labels, None), g.value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        add("test_jobs_total", &[("stage", "push"), ("outcome", "done")], 2.0);
        observe("test_job_seconds", &[("stage", "push")], 0.2);
        let text = render(&[
            Gauge::new("test_queue_depth", &[("stage", "push")], 3.0),
            Gauge::new("test_queue_depth", &[("stage", "merge")], 0.0),
        ]);
        assert!(
            text.contains("# TYPE test_jobs_total counter\ntest_jobs_total{stage=\"push\",outcome=\"done\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("test_job_seconds_bucket{stage=\"push\",le=\"0.25\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("test_job_seconds_bucket{stage=\"push\",le=\"0.1\"} 0"),
            "{text}"
        );
        assert!(text.contains("test_job_seconds_count{stage=\"push\"} 1"), "{text}");
        assert!(
            text.contains("# TYPE test_queue_depth gauge\ntest_queue_depth{stage=\"push\"} 3\ntest_queue_depth{stage=\"merge\"} 0\n"),
            "{text}"
        );
    }
}
