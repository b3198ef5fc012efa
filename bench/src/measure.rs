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

/// Kernel clock ticks per second in `/proc` CPU times (`USER_HZ`, 100 on Linux).
const TICKS: f64 = 100.0;

/// CPU seconds (user and system) a process has used; 0 if it cannot be read.
pub fn process_cpu(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name (which may hold spaces): utime is the
            // 14th field of the line, stime the 15th.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .map_or(0.0, |t| t / TICKS)
}

/// Busy CPU seconds of the whole machine so far — every process, the database server and the
/// kernel included — and the seconds stolen by the hypervisor, from `/proc/stat`.
fn machine_cpu() -> (f64, f64) {
    let line = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = line
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0.0);
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    ((at(0) + at(1) + at(2) + at(5) + at(6)) / TICKS, at(7) / TICKS)
}

/// CPU seconds of this run's worker processes that have ended (reported or killed), and the
/// pids of its long-lived receivers: a phase's CPU is split between them, the benchmark
/// process itself and the rest (the PostgreSQL server, source and store).
static WORKERS_CPU: std::sync::Mutex<f64> = std::sync::Mutex::new(0.0);
static RECEIVERS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Counts an ended worker's CPU seconds.
pub fn add_worker_cpu(secs: f64) {
    *WORKERS_CPU.lock().unwrap_or_else(|e| e.into_inner()) += secs;
}

/// Includes a receiver process in every later phase's CPU split.
pub fn watch_receiver(pid: u32) {
    RECEIVERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(pid.to_string());
}

/// CPU counters at one moment.
#[derive(Clone, Copy)]
struct CpuAt {
    machine: f64,
    steal: f64,
    workers: f64,
    receivers: f64,
    own: f64,
}

impl CpuAt {
    fn now() -> CpuAt {
        let (machine, steal) = machine_cpu();
        let receivers = RECEIVERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|p| process_cpu(p))
            .sum();
        CpuAt {
            machine,
            steal,
            workers: *WORKERS_CPU.lock().unwrap_or_else(|e| e.into_inner()),
            receivers,
            own: process_cpu("self"),
        }
    }
}

/// Where a phase's CPU seconds went.
#[derive(Clone, Copy, Default)]
pub struct CpuSplit {
    /// The whole machine (busy, not idle or waiting).
    pub total: f64,
    /// Pipeline worker processes.
    pub workers: f64,
    /// The receiver (the Data Push API stand-in).
    pub receiver: f64,
    /// The benchmark process (the COPY client and the in-process reader).
    pub bench: f64,
    /// Everything else: the PostgreSQL server (source and store), the kernel.
    pub postgres_and_rest: f64,
    /// Seconds the hypervisor gave to other machines (a noisy neighbour shows here).
    pub stolen: f64,
}

/// Resets this process's peak RSS counter so a phase run in-process reports its own peak.
pub fn reset_own_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A phase being timed.
pub struct Phase(Instant, CpuAt);

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
    /// Where its CPU went.
    pub cpu: CpuSplit,
    /// Further figures (store writes, lags, …).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Phase {
    /// Starts timing.
    pub fn start() -> Phase {
        Phase(Instant::now(), CpuAt::now())
    }

    /// Seconds so far.
    pub fn elapsed(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }

    /// Stops.
    pub fn finish(self, name: &str, rows: u64, bytes: u64, peak_rss: Vec<u64>) -> Measured {
        let (a, b) = (self.1, CpuAt::now());
        let (total, workers, receiver, bench) = (
            b.machine - a.machine,
            b.workers - a.workers,
            b.receivers - a.receivers,
            b.own - a.own,
        );
        let cpu = CpuSplit {
            total,
            workers,
            receiver,
            bench,
            postgres_and_rest: (total - workers - receiver - bench).max(0.0),
            stolen: b.steal - a.steal,
        };
        Measured {
            cpu,
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

    /// The baseline's CPU seconds for `bytes` of COPY text.
    fn base_cpu(&self, bytes: u64) -> f64 {
        self.baseline
            .as_ref()
            .map_or(1.0, |b| b.cpu.total.max(0.01) * bytes as f64 / b.bytes.max(1) as f64)
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
                "cpu_seconds": {
                    "total": m.cpu.total,
                    "x_baseline": m.cpu.total / self.base_cpu(m.bytes),
                    "workers": m.cpu.workers,
                    "receiver": m.cpu.receiver,
                    "bench_process": m.cpu.bench,
                    "postgres_and_rest": m.cpu.postgres_and_rest,
                    "stolen": m.cpu.stolen,
                },
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
            "\n| phase | rows | seconds | rows/s | MB/s | × COPY | CPU s (workers / receiver / PostgreSQL) | CPU × COPY | peak RSS MB |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for m in self.baseline.iter().chain(&self.phases) {
            let c = &m.cpu;
            out.push_str(&format!(
                "| {} | {} | {:.2} | {:.0} | {:.1} | {:.2} | {:.1} ({:.1} / {:.1} / {:.1}) | {:.2} | {:.0} |\n",
                m.name,
                m.rows,
                m.secs,
                m.rows as f64 / m.secs,
                m.bytes as f64 / 1e6 / m.secs,
                m.secs / self.base_rate(m.bytes),
                c.total,
                c.workers,
                c.receiver,
                c.postgres_and_rest,
                c.total / self.base_cpu(m.bytes),
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
