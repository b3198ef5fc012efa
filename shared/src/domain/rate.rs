//! Adaptive concurrency for one destination (AIMD): a 429 or 503 halves the requests allowed in
//! flight, each run of successes as long as the current limit adds one back, up to the maximum.

/// The additive-increase / multiplicative-decrease state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aimd {
    max: usize,
    current: usize,
    successes: usize,
}

impl Aimd {
    /// Starts at the maximum (a healthy destination is used fully from the first request).
    pub fn new(max: usize) -> Aimd {
        let max = max.max(1);
        Aimd {
            max,
            current: max,
            successes: 0,
        }
    }

    /// Requests allowed in flight now.
    pub fn limit(&self) -> usize {
        self.current
    }

    /// A 2xx: after `limit` successes in a row, allow one more.
    pub fn on_success(&mut self) {
        self.successes += 1;
        if self.successes >= self.current && self.current < self.max {
            self.current += 1;
            self.successes = 0;
        }
    }

    /// A 429 or 503: halve, never below one.
    pub fn on_throttle(&mut self) {
        self.current = (self.current / 2).max(1);
        self.successes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_on_throttle_and_recovers_additively() {
        let mut a = Aimd::new(8);
        a.on_throttle();
        assert_eq!(a.limit(), 4);
        a.on_throttle();
        a.on_throttle();
        a.on_throttle();
        assert_eq!(a.limit(), 1, "never below one");
        a.on_success();
        assert_eq!(a.limit(), 2);
        a.on_success();
        assert_eq!(a.limit(), 2);
        a.on_success();
        assert_eq!(a.limit(), 3);
        for _ in 0..100 {
            a.on_success();
        }
        assert_eq!(a.limit(), 8, "capped at the maximum");
        assert_eq!(Aimd::new(0).limit(), 1);
    }
}
