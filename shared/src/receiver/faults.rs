//! Fault injection for the receiver: one-shot faults queued by tests ([`Faults`]), and faults by
//! rate drawn from a seeded generator ([`FaultRates`]) — 500s, 503s, 429s with `Retry-After`,
//! slow responses past the client's timeout, and connections dropped before or after the batch
//! is applied (the nasty case: applied but never acknowledged).

use serde::Deserialize;
use std::collections::VecDeque;
use std::sync::Mutex;

/// One injected failure: the next `times` batches (of `dataset`, if given) get `status`.
#[derive(Debug, Clone, Deserialize)]
pub struct Fault {
    /// Status to answer.
    pub status: u16,
    /// How many requests it applies to.
    #[serde(default = "one")]
    pub times: u32,
    /// Only batches of this dataset.
    #[serde(default)]
    pub dataset: Option<String>,
    /// `Retry-After` seconds to send.
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
    /// Response body.
    #[serde(default)]
    pub body: Option<String>,
}

fn one() -> u32 {
    1
}

impl Fault {
    /// The next request (of any dataset) gets `status`, with `body` if given.
    pub fn once(status: u16, body: Option<&str>) -> Fault {
        Fault {
            status,
            times: 1,
            dataset: None,
            retry_after_secs: None,
            body: body.map(str::to_owned),
        }
    }
}

/// Pending one-shot failures.
#[derive(Default)]
pub struct Faults(Mutex<VecDeque<Fault>>);

impl Faults {
    /// Adds a failure.
    pub fn push(&self, f: Fault) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push_back(f);
    }
    /// Removes every failure.
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
    /// No failure is queued: the receiver need not look for the dataset a fault would match.
    pub fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }
    /// Takes the next failure that applies to `dataset`.
    pub fn take(&self, dataset: Option<&str>) -> Option<Fault> {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let i = q
            .iter()
            .position(|f| f.dataset.is_none() || f.dataset.as_deref() == dataset)?;
        let f = q[i].clone();
        if q[i].times <= 1 {
            q.remove(i);
        } else {
            q[i].times -= 1;
        }
        Some(f)
    }
}

/// Probabilities (0..1) of each fault per request; they add up to at most 1.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultRates {
    /// 500 Internal Server Error.
    pub error_500: f64,
    /// 503 Service Unavailable.
    pub error_503: f64,
    /// 429 Too Many Requests with `Retry-After`.
    pub throttle_429: f64,
    /// Respond only after `slow_ms` (then apply: the client has likely given up).
    pub slow: f64,
    /// Drop the connection without applying.
    pub drop_before: f64,
    /// Apply, then drop the connection before the response body.
    pub drop_after: f64,
    /// `Retry-After` seconds sent with 429.
    pub retry_after_secs: u64,
    /// Delay of a slow response.
    pub slow_ms: u64,
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Draw {
    /// Answer normally.
    Ok,
    /// Answer with this status (and `Retry-After` for 429).
    Status(u16),
    /// Sleep, then answer normally.
    Slow,
    /// Drop the connection without applying.
    DropBefore,
    /// Apply, then drop the connection.
    DropAfter,
}

impl FaultRates {
    /// Parses `kind=rate` items: `500`, `503`, `429`, `slow`, `drop-before`, `drop-after`.
    pub fn parse(items: &[String]) -> Result<FaultRates, String> {
        let mut r = FaultRates {
            retry_after_secs: 1,
            slow_ms: 2_000,
            ..Default::default()
        };
        for item in items {
            let (kind, rate) = item
                .split_once('=')
                .ok_or_else(|| format!("fault `{item}`: expected KIND=RATE"))?;
            let rate: f64 = rate
                .parse()
                .map_err(|_| format!("fault `{item}`: rate must be a number in 0..1"))?;
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("fault `{item}`: rate must be in 0..1"));
            }
            let slot = match kind {
                "500" => &mut r.error_500,
                "503" => &mut r.error_503,
                "429" => &mut r.throttle_429,
                "slow" => &mut r.slow,
                "drop-before" => &mut r.drop_before,
                "drop-after" => &mut r.drop_after,
                _ => {
                    return Err(format!(
                        "fault `{item}`: kind must be 500, 503, 429, slow, drop-before or drop-after"
                    ))
                }
            };
            *slot = rate;
        }
        if r.total() > 1.0 {
            return Err(format!("fault rates add up to {}, more than 1", r.total()));
        }
        Ok(r)
    }

    fn total(&self) -> f64 {
        self.error_500 + self.error_503 + self.throttle_429 + self.slow + self.drop_before + self.drop_after
    }

    /// Maps a uniform draw `u` in [0, 1) onto a fault.
    pub fn draw(&self, u: f64) -> Draw {
        let table = [
            (self.error_500, Draw::Status(500)),
            (self.error_503, Draw::Status(503)),
            (self.throttle_429, Draw::Status(429)),
            (self.slow, Draw::Slow),
            (self.drop_before, Draw::DropBefore),
            (self.drop_after, Draw::DropAfter),
        ];
        let mut acc = 0.0;
        for (p, d) in table {
            acc += p;
            if u < acc {
                return d;
            }
        }
        Draw::Ok
    }
}

/// Rates with their seeded generator, so a test run is reproducible.
pub struct RateFaults {
    rates: FaultRates,
    rng: Mutex<fastrand::Rng>,
}

impl RateFaults {
    /// Rates drawn from `seed`.
    pub fn new(rates: FaultRates, seed: u64) -> RateFaults {
        RateFaults {
            rates,
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
        }
    }
    /// The next request's fate.
    pub fn next(&self) -> Draw {
        let u = self.rng.lock().unwrap_or_else(|p| p.into_inner()).f64();
        self.rates.draw(u)
    }
    /// The rates.
    pub fn rates(&self) -> &FaultRates {
        &self.rates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_draws_by_rate() {
        let items: Vec<String> = ["500=0.2", "429=0.1", "slow=0.05", "drop-after=0.05"]
            .map(String::from)
            .into();
        let r = FaultRates::parse(&items).unwrap();
        assert_eq!(r.draw(0.1), Draw::Status(500));
        assert_eq!(r.draw(0.25), Draw::Status(429));
        assert_eq!(r.draw(0.32), Draw::Slow);
        assert_eq!(r.draw(0.37), Draw::DropAfter);
        assert_eq!(r.draw(0.5), Draw::Ok);
        assert!(FaultRates::parse(&["500=0.7".into(), "503=0.5".into()]).is_err());
        assert!(FaultRates::parse(&["teapot=0.1".into()])
            .unwrap_err()
            .contains("kind must be"));
        let a = RateFaults::new(r.clone(), 7);
        let b = RateFaults::new(r, 7);
        let (x, y): (Vec<_>, Vec<_>) = (0..50).map(|_| (a.next(), b.next())).unzip();
        assert_eq!(x, y, "the same seed gives the same faults");
    }
}
