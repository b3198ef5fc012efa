//! Wall time, peak RSS and store writes of one phase; the report prints each beside the
//! baseline of the same run.

use std::time::Instant;

/// Peak resident set size of a process (Linux `VmHWM`), in bytes; 0 if it cannot be read.
pub fn peak_rss(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or(0, |kb| kb * 1024)
}

/// Resets this process's peak RSS counter so a phase run in-process reports its own peak.
pub fn reset_own_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A phase being timed.
pub struct Phase(Instant);

/// A finished phase.
pub struct Measured {
    /// What was measured.
    pub name: String,
    /// Wall time.
    pub secs: f64,
    /// Source rows the phase covers (rows/s).
    pub rows: u64,
    /// The same rows' size as COPY text (MB/s).
    pub bytes: u64,
    /// Peak RSS of each process that did the work, bytes.
    pub peak_rss: Vec<u64>,
    /// Further figures (store writes, lags, …).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Phase {
    /// Starts timing.
    pub fn start() -> Phase {
        Phase(Instant::now())
    }

    /// Seconds so far.
    pub fn elapsed(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }

    /// Stops.
    pub fn finish(self, name: &str, rows: u64, bytes: u64, peak_rss: Vec<u64>) -> Measured {
        Measured {
            name: name.into(),
            secs: self.elapsed(),
            rows,
            bytes,
            peak_rss,
            extra: serde_json::Map::new(),
        }
    }
}

impl Measured {
    /// Adds a figure printed under the table and kept in the JSON.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Measured {
        self.extra.insert(key.into(), value.into());
        self
    }

    fn max_rss_mb(&self) -> f64 {
        self.peak_rss.iter().copied().max().unwrap_or(0) as f64 / 1e6
    }
}

/// The table of phases.
#[derive(Default)]
pub struct Report {
    baseline: Option<Measured>,
    phases: Vec<Measured>,
    /// Notes printed after the table (and kept in the JSON).
    pub notes: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    /// Sets the baseline.
    pub fn baseline(&mut self, m: Measured) {
        eprintln!("  {}: {:.2} s", m.name, m.secs);
        self.baseline = Some(m);
    }

    /// Adds a phase.
    pub fn add(&mut self, m: Measured) {
        eprintln!(
            "  {}: {:.2} s ({:.2} × COPY)",
            m.name,
            m.secs,
            m.secs / self.base_rate(m.bytes)
        );
        self.phases.push(m);
    }

    /// The baseline's time for `bytes` of COPY text: ratios compare like with like when a
    /// phase covers more (onboarding: 12 tables) or less than the baseline table.
    fn base_rate(&self, bytes: u64) -> f64 {
        self.baseline
            .as_ref()
            .map_or(1.0, |b| b.secs * bytes as f64 / b.bytes.max(1) as f64)
    }

    /// The figures as JSON (for `target/bench/*.json`).
    pub fn to_json(&self) -> serde_json::Value {
        let phase = |m: &Measured| {
            let mut o = serde_json::json!({
                "phase": m.name,
                "seconds": m.secs,
                "rows": m.rows,
                "rows_per_s": m.rows as f64 / m.secs,
                "mb_per_s": m.bytes as f64 / 1e6 / m.secs,
                "x_baseline": m.secs / self.base_rate(m.bytes),
                "peak_rss_mb_per_process": m.peak_rss.iter().map(|b| *b as f64 / 1e6).collect::<Vec<_>>(),
            });
            o.as_object_mut().expect("an object").extend(m.extra.clone());
            o
        };
        serde_json::json!({
            "baseline": self.baseline.as_ref().map(phase),
            "phases": self.phases.iter().map(phase).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }

    /// Markdown table, then each phase's further figures.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "\n| phase | rows | seconds | rows/s | MB/s | × COPY | peak RSS MB |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for m in self.baseline.iter().chain(&self.phases) {
            out.push_str(&format!(
                "| {} | {} | {:.2} | {:.0} | {:.1} | {:.2} | {:.0} |\n",
                m.name,
                m.rows,
                m.secs,
                m.rows as f64 / m.secs,
                m.bytes as f64 / 1e6 / m.secs,
                m.secs / self.base_rate(m.bytes),
                m.max_rss_mb()
            ));
        }
        for m in self.phases.iter().filter(|m| !m.extra.is_empty()) {
            out.push_str(&format!("\n{}:\n", m.name));
            for (k, v) in &m.extra {
                out.push_str(&format!("  {k}: {v}\n"));
            }
        }
        for (k, v) in &self.notes {
            out.push_str(&format!("\n{k}: {v}\n"));
        }
        out
    }
}
