//! A circuit breaker per backend: after `failures` consecutive failures it opens and the backend
//! is skipped; after `cooldown` it half-opens and lets one request through, whose outcome closes
//! it again or re-opens it for another cooldown.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The gauge value: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

#[derive(Debug)]
struct Inner {
    consecutive_failures: usize,
    opened_at: Option<Instant>,
    /// Half-open: the one trial request is in flight.
    trial_in_flight: bool,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    failures: usize,
    cooldown: Duration,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    pub fn new(failures: usize, cooldown: Duration) -> Self {
        Self {
            failures: failures.max(1),
            cooldown,
            inner: Mutex::new(Inner {
                consecutive_failures: 0,
                opened_at: None,
                trial_in_flight: false,
            }),
        }
    }

    pub fn state(&self) -> BreakerState {
        let Ok(inner) = self.inner.lock() else {
            return BreakerState::Closed;
        };
        match inner.opened_at {
            None => BreakerState::Closed,
            Some(at) if at.elapsed() >= self.cooldown => BreakerState::HalfOpen,
            Some(_) => BreakerState::Open,
        }
    }

    /// Whether a request may go to the backend now (half-open: only the first one).
    pub fn allow(&self) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return true;
        };
        match inner.opened_at {
            None => true,
            Some(at) if at.elapsed() >= self.cooldown && !inner.trial_in_flight => {
                inner.trial_in_flight = true;
                true
            }
            Some(_) => false,
        }
    }

    pub fn record_success(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.consecutive_failures = 0;
            inner.opened_at = None;
            inner.trial_in_flight = false;
        }
    }

    pub fn record_failure(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.consecutive_failures += 1;
            if inner.trial_in_flight || inner.consecutive_failures >= self.failures {
                // A failed trial re-opens for a whole cooldown.
                inner.opened_at = Some(Instant::now());
            }
            inner.trial_in_flight = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_recovers_through_half_open() {
        let b = CircuitBreaker::new(2, Duration::from_millis(50));
        assert!(b.allow());
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.record_success();
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Closed, "a success reset the count");
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.allow(), "one trial");
        assert!(!b.allow(), "only one trial at a time");
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open, "a failed trial re-opens");
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allow());
        b.record_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow() && b.allow());
    }
}
