//! Scheduling rules: when a data source is due for an interval run.

use chrono::{DateTime, Duration, Utc};

/// How often a running job of a run tells the store it is still at work (`RunStore::touch_run`):
/// a run's quiet period (`Recovery::stalled_after_secs`) spans several, so a long job's run is
/// never taken for stalled.
pub const RUN_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(60);

/// What the scheduler knows about one data source at a tick.
#[derive(Debug, Clone, Copy)]
pub struct SourceClock {
    /// Seconds between runs.
    pub interval_secs: u64,
    /// When the last run was opened; `None` if never onboarded.
    pub last_started: Option<DateTime<Utc>>,
    /// Whether a run is still active (including one blocked by a dead letter).
    pub active: bool,
    /// Whether the tenant or the data source is paused.
    pub paused: bool,
}

/// Why a data source is or is not due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Open an interval run now.
    Yes,
    /// Never onboarded: only `onboard` opens its first (initial) run.
    NotOnboarded,
    /// Paused by an operator.
    Paused,
    /// A run is active; runs of one data source never overlap.
    Busy,
    /// The interval has not elapsed.
    NotYet,
}

/// Applies the rules; intervals count from run start, so a slow run does not drift the schedule.
pub fn due(clock: &SourceClock, now: DateTime<Utc>) -> Due {
    let Some(last) = clock.last_started else {
        return Due::NotOnboarded;
    };
    if clock.paused {
        Due::Paused
    } else if clock.active {
        Due::Busy
    } else if now - last >= Duration::seconds(clock.interval_secs as i64) {
        Due::Yes
    } else {
        Due::NotYet
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let now = Utc::now();
        let c = SourceClock {
            interval_secs: 60,
            last_started: Some(now - Duration::seconds(61)),
            active: false,
            paused: false,
        };
        assert_eq!(due(&c, now), Due::Yes);
        assert_eq!(due(&SourceClock { active: true, ..c }, now), Due::Busy);
        assert_eq!(due(&SourceClock { paused: true, ..c }, now), Due::Paused);
        assert_eq!(
            due(
                &SourceClock {
                    last_started: None,
                    ..c
                },
                now
            ),
            Due::NotOnboarded
        );
        assert_eq!(
            due(
                &SourceClock {
                    last_started: Some(now - Duration::seconds(59)),
                    ..c
                },
                now
            ),
            Due::NotYet
        );
    }
}
