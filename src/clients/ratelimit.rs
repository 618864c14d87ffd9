//! The rate limiter in front of the Spectora API: one for the whole process, shared by
//! every rule and worker, so that the company's request budget holds however many
//! rules run at once.
//!
//! It is a generic cell rate algorithm: each request reserves the next free slot on a
//! timeline of one slot every `60 s / N`, with a burst of a few slots that may be used
//! at once. A caller that reserves a slot in the future waits for it on its own thread;
//! the lock is held only to reserve.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::clock::Clock;

/// Requests a minute, shared by every caller.
#[derive(Debug)]
pub struct RateLimiter {
    /// The time between two slots.
    interval: Duration,
    /// How far ahead of the timeline a caller may be: `(burst - 1) × interval`.
    tolerance: Duration,
    /// The theoretical arrival time of the next request: when the timeline is free.
    next_free: Mutex<Option<Instant>>,
    clock: Arc<dyn Clock>,
}

impl RateLimiter {
    /// At most `per_minute` requests a minute on average, of which `burst` may go at once.
    /// `per_minute` of 0 means no limit.
    pub fn per_minute(per_minute: u32, burst: u32, clock: Arc<dyn Clock>) -> RateLimiter {
        let interval = if per_minute == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(60) / per_minute
        };
        RateLimiter {
            interval,
            tolerance: interval * burst.max(1).saturating_sub(1),
            next_free: Mutex::new(None),
            clock,
        }
    }

    /// Reserves the next slot and returns how long the caller must wait for it.
    pub fn reserve(&self) -> Duration {
        if self.interval.is_zero() {
            return Duration::ZERO;
        }
        let now = self.clock.now();
        let mut next_free = self
            .next_free
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tat = next_free.map_or(now, |t| t.max(now));
        let allowed_at = tat.checked_sub(self.tolerance).unwrap_or(now).max(now);
        *next_free = Some(tat + self.interval);
        allowed_at - now
    }

    /// Waits (on the clock) until a request may go.
    pub fn acquire(&self) {
        let wait = self.reserve();
        if !wait.is_zero() {
            self.clock.sleep(wait);
        }
    }

    /// Holds every caller until `at`: the server said, with a 429, that it will take no
    /// request before then.
    pub fn hold_until(&self, at: Instant) {
        if self.interval.is_zero() {
            return;
        }
        let mut next_free = self
            .next_free
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let held = at + self.tolerance;
        *next_free = Some(next_free.map_or(held, |t| t.max(held)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::clock::ManualClock;

    #[test]
    fn a_burst_goes_at_once_then_slots_are_spaced() {
        let clock = ManualClock::new();
        let limiter = RateLimiter::per_minute(60, 3, clock.clone());
        for _ in 0..3 {
            assert_eq!(limiter.reserve(), Duration::ZERO);
        }
        assert_eq!(limiter.reserve(), Duration::from_secs(1));
        assert_eq!(limiter.reserve(), Duration::from_secs(2));
    }

    #[test]
    fn acquire_waits_on_the_clock() {
        let clock = ManualClock::new();
        let limiter = RateLimiter::per_minute(5, 1, clock.clone());
        for _ in 0..6 {
            limiter.acquire();
        }
        // Five gaps of twelve seconds, and no real waiting.
        assert_eq!(clock.slept(), Duration::from_secs(60));
        assert!(clock.sleeps().iter().all(|d| *d == Duration::from_secs(12)));
    }

    #[test]
    fn idle_time_refills_the_burst_but_no_more() {
        let clock = ManualClock::new();
        let limiter = RateLimiter::per_minute(60, 2, clock.clone());
        limiter.acquire();
        limiter.acquire();
        clock.advance(Duration::from_secs(3600));
        assert_eq!(limiter.reserve(), Duration::ZERO);
        assert_eq!(limiter.reserve(), Duration::ZERO);
        assert_eq!(limiter.reserve(), Duration::from_secs(1));
    }

    #[test]
    fn hold_until_delays_every_caller() {
        let clock = ManualClock::new();
        let limiter = RateLimiter::per_minute(600, 5, clock.clone());
        limiter.hold_until(clock.now() + Duration::from_secs(30));
        assert_eq!(limiter.reserve(), Duration::from_secs(30));
    }

    #[test]
    fn zero_means_no_limit() {
        let clock = ManualClock::new();
        let limiter = RateLimiter::per_minute(0, 1, clock.clone());
        for _ in 0..1000 {
            limiter.acquire();
        }
        limiter.hold_until(clock.now() + Duration::from_secs(30));
        assert_eq!(clock.slept(), Duration::ZERO);
    }
}
