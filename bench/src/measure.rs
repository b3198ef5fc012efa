//! Wall time and peak RSS of one phase; the report prints each beside the baseline.

use std::time::Instant;

/// Peak resident set size of this process since the last reset, in bytes (Linux `VmHWM`).
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or(0, |kb| kb * 1024)
}

/// Resets the peak RSS counter so each phase reports its own peak.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A phase being timed.
pub struct Phase(Instant);

/// A finished phase.
pub struct Measured {
    name: String,
    secs: f64,
    bytes: u64,
    peak_rss: u64,
}

impl Phase {
    /// Starts timing and resets the peak RSS.
    pub fn start() -> Phase {
        reset_peak();
        Phase(Instant::now())
    }

    /// Stops; `bytes` is the table's size as text (for MB/s).
    pub fn finish(self, name: &str, bytes: u64) -> Measured {
        Measured {
            name: name.into(),
            secs: self.0.elapsed().as_secs_f64(),
            bytes,
            peak_rss: peak_rss(),
        }
    }
}

/// The table of phases.
pub struct Report {
    rows: u64,
    baseline: Option<Measured>,
    phases: Vec<Measured>,
}

impl Report {
    /// A report for a table of `rows` rows.
    pub fn new(rows: u64) -> Report {
        Report {
            rows,
            baseline: None,
            phases: Vec::new(),
        }
    }
    /// Sets the baseline.
    pub fn baseline(&mut self, m: Measured) {
        self.baseline = Some(m);
    }
    /// Adds a phase.
    pub fn add(&mut self, m: Measured) {
        self.phases.push(m);
    }
    /// The figures as JSON (for `target/bench/*.json`).
    pub fn to_json(&self) -> serde_json::Value {
        let base = self.baseline.as_ref().map_or(1.0, |b| b.secs);
        let phase = |m: &Measured| {
            serde_json::json!({
                "phase": m.name,
                "seconds": m.secs,
                "rows_per_s": self.rows as f64 / m.secs,
                "mb_per_s": m.bytes as f64 / 1e6 / m.secs,
                "x_baseline": m.secs / base,
                "peak_rss_mb": m.peak_rss as f64 / 1e6,
            })
        };
        serde_json::json!({
            "rows": self.rows,
            "baseline": self.baseline.as_ref().map(phase),
            "phases": self.phases.iter().map(phase).collect::<Vec<_>>(),
        })
    }

    /// Markdown table.
    pub fn render(&self) -> String {
        let base = self.baseline.as_ref().map_or(1.0, |b| b.secs);
        let mut out = format!(
            "\n{} rows, {:.1} MB as COPY text\n\n| phase | seconds | rows/s | MB/s | × COPY | peak RSS MB |\n| --- | ---: | ---: | ---: | ---: | ---: |\n",
            self.rows,
            self.baseline.as_ref().map_or(0.0, |b| b.bytes as f64 / 1e6)
        );
        for m in self.baseline.iter().chain(&self.phases) {
            out.push_str(&format!(
                "| {} | {:.2} | {:.0} | {:.1} | {:.2} | {:.0} |\n",
                m.name,
                m.secs,
                self.rows as f64 / m.secs,
                m.bytes as f64 / 1e6 / m.secs,
                m.secs / base,
                m.peak_rss as f64 / 1e6
            ));
        }
        out
    }
}
