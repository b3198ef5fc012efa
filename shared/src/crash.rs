//! Crash points for the crash-safety tests: `SIGNALS_CRASH_AT=name[:n]` kills the process with
//! SIGKILL the n-th time (default first) execution passes the named point. Unset, it costs one
//! relaxed load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

fn target() -> &'static Option<(String, u64)> {
    TARGET.get_or_init(|| {
        let v = std::env::var("SIGNALS_CRASH_AT").ok()?;
        let (name, n) = match v.split_once(':') {
            Some((name, n)) => (name.to_owned(), n.parse().unwrap_or(1)),
            None => (v, 1),
        };
        Some((name, n))
    })
}

/// Marks a point where a crash must be survivable.
pub fn point(name: &str) {
    if let Some((want, n)) = target() {
        if want == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            eprintln!("crash point `{name}` reached: killing the process (SIGNALS_CRASH_AT)");
            // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}
