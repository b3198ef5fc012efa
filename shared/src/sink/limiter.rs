//! Requests in flight to one destination: an adaptive limit (AIMD) that a 429 or 503 halves and
//! successes grow back, plus a pause until the server's `Retry-After` — shared by every push of
//! every tenant in this process, so a throttled destination is slowed down as a whole.

use crate::domain::rate::Aimd;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

struct State {
    aimd: Aimd,
    inflight: usize,
    paused_until: Option<Instant>,
}

/// The limiter of one destination.
pub struct Limiter {
    state: Mutex<State>,
    wake: tokio::sync::Notify,
}

/// A request's place in flight; dropping it frees the place.
pub struct Permit<'a>(&'a Limiter);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner()).inflight -= 1;
        self.0.wake.notify_waiters();
    }
}

impl Limiter {
    /// At most `max` requests in flight.
    pub fn new(max: usize) -> Limiter {
        Limiter {
            state: Mutex::new(State {
                aimd: Aimd::new(max),
                inflight: 0,
                paused_until: None,
            }),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Waits for a place (and for any `Retry-After` pause to pass).
    pub async fn acquire(&self) -> Permit<'_> {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let pause = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                match s.paused_until {
                    Some(t) if t > Instant::now() => Some(t),
                    _ => {
                        s.paused_until = None;
                        if s.inflight < s.aimd.limit() {
                            s.inflight += 1;
                            return Permit(self);
                        }
                        None
                    }
                }
            };
            match pause {
                Some(t) => tokio::time::sleep_until(t).await,
                // A permit dropping wakes us; the timeout covers a limit that grew meanwhile.
                None => {
                    let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
                }
            }
        }
    }

    /// A 2xx.
    pub fn success(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).aimd.on_success();
        self.wake.notify_waiters();
    }

    /// A 429 or 503: halve the limit and pause everyone until `retry_after` has passed.
    pub fn throttled(&self, retry_after: Option<Duration>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.aimd.on_throttle();
        if let Some(wait) = retry_after {
            let until = Instant::now() + wait.min(Duration::from_secs(3600));
            s.paused_until = Some(s.paused_until.map_or(until, |p| p.max(until)));
        }
        tracing::warn!(
            limit = s.aimd.limit(),
            retry_after_ms = retry_after.map(|d| d.as_millis() as u64),
            "destination throttled: slowing down"
        );
    }

    /// The current limit (for tests and metrics).
    pub fn limit(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).aimd.limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounds_inflight_and_pauses_for_retry_after() {
        let l = Limiter::new(2);
        let a = l.acquire().await;
        let _b = l.acquire().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(30), l.acquire())
                .await
                .is_err(),
            "third waits"
        );
        drop(a);
        let _c = tokio::time::timeout(Duration::from_millis(100), l.acquire())
            .await
            .expect("freed place");
        l.throttled(Some(Duration::from_millis(150)));
        assert_eq!(l.limit(), 1);
        drop(_b);
        drop(_c);
        let started = Instant::now();
        let _d = l.acquire().await;
        assert!(
            started.elapsed() >= Duration::from_millis(140),
            "Retry-After pauses new requests"
        );
    }
}
