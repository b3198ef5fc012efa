//! Retry policy: which outcomes retry, how long to wait (capped exponential backoff with full
//! jitter, never shorter than a server's `Retry-After`), and when to give up and dead-letter.

use chrono::{DateTime, Utc};
use std::time::Duration;

/// How an HTTP status is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// 2xx: delivered.
    Success,
    /// 408, 425, 429 and 5xx except 501: try again later.
    Retry,
    /// Everything else (other 4xx, 3xx, 501): the request itself is wrong; dead-letter it.
    Reject,
}

/// Classifies a response status.
pub fn classify_status(status: u16) -> StatusClass {
    match status {
        200..=299 => StatusClass::Success,
        408 | 425 | 429 => StatusClass::Retry,
        501 => StatusClass::Reject,
        500..=599 => StatusClass::Retry,
        _ => StatusClass::Reject,
    }
}

/// Parses `Retry-After` as delta-seconds or an HTTP-date relative to `now`.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(v).ok()?;
    let wait = at.with_timezone(&Utc) - now;
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// Attempts and delays for one kind of job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Deliveries before the job is dead-lettered.
    pub max_attempts: u32,
    /// Delay ceiling of the first retry.
    pub base: Duration,
    /// Longest delay.
    pub cap: Duration,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run again after this delay.
    RetryAfter(Duration),
    /// Give up: record a dead letter.
    DeadLetter,
}

/// Longest wait a server may impose through `Retry-After` before we count it as our own cap.
const MAX_SERVER_WAIT: Duration = Duration::from_secs(3600);

impl RetryPolicy {
    /// Full-jitter backoff for the given attempt (1-based), using `unit` ∈ [0,1) as the random draw.
    pub fn backoff(&self, attempt: u32, unit: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        exp.min(self.cap).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// Decides after attempt `attempt` failed; `retryable` from the error's class.
    pub fn decide(&self, attempt: u32, retryable: bool, retry_after: Option<Duration>, unit: f64) -> Decision {
        if !retryable || attempt >= self.max_attempts {
            return Decision::DeadLetter;
        }
        let backoff = self.backoff(attempt, unit);
        let server = retry_after.unwrap_or(Duration::ZERO).min(MAX_SERVER_WAIT);
        Decision::RetryAfter(backoff.max(server))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: RetryPolicy = RetryPolicy {
        max_attempts: 4,
        base: Duration::from_millis(100),
        cap: Duration::from_millis(350),
    };

    #[test]
    fn statuses_classify_like_the_protocol_says() {
        assert_eq!(classify_status(200), StatusClass::Success);
        assert_eq!(classify_status(204), StatusClass::Success);
        for s in [408, 425, 429, 500, 502, 503, 504] {
            assert_eq!(classify_status(s), StatusClass::Retry, "{s}");
        }
        for s in [301, 400, 401, 403, 404, 409, 413, 422, 501] {
            assert_eq!(classify_status(s), StatusClass::Reject, "{s}");
        }
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        assert_eq!(P.backoff(1, 0.999_999).as_millis(), 99);
        assert_eq!(P.backoff(2, 0.5), Duration::from_millis(100));
        assert_eq!(P.backoff(3, 1.0), Duration::from_millis(350));
        assert_eq!(P.backoff(30, 1.0), Duration::from_millis(350));
        assert_eq!(P.backoff(3, 0.0), Duration::ZERO);
    }

    #[test]
    fn decisions_honour_retry_after_and_attempts() {
        assert_eq!(P.decide(1, false, None, 0.5), Decision::DeadLetter);
        assert_eq!(P.decide(4, true, None, 0.5), Decision::DeadLetter);
        assert_eq!(
            P.decide(1, true, Some(Duration::from_secs(7)), 0.5),
            Decision::RetryAfter(Duration::from_secs(7))
        );
        assert_eq!(
            P.decide(2, true, None, 0.5),
            Decision::RetryAfter(Duration::from_millis(100))
        );
    }

    #[test]
    fn retry_after_parses_both_forms() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:27:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
