//! Time as the HTTP client and the simulator see it: a monotonic clock, the wall clock
//! and sleeping, behind one trait, so that tests of rate limits and `Retry-After` run
//! minutes of waiting in no time.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time that can also wait. Waiting is blocking: the HTTP client waits on
/// the worker thread that runs the rule, never on the async runtime.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Monotonic time, for intervals and deadlines.
    fn now(&self) -> Instant;

    /// Wall-clock time, for HTTP dates such as `Retry-After: Wed, 21 Oct 2015 07:28:00 GMT`.
    fn wall(&self) -> SystemTime;

    /// Blocks the calling thread for `duration`.
    fn sleep(&self, duration: Duration);
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

/// A clock that moves only when told to, or when something sleeps on it: a sleep
/// returns at once and moves the clock forward by its duration. Every sleep is kept,
/// so a test can say how long the code under test waited.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    wall_start: SystemTime,
    state: Mutex<ManualState>,
}

#[derive(Debug, Default)]
struct ManualState {
    elapsed: Duration,
    sleeps: Vec<Duration>,
}

impl ManualClock {
    /// A clock that starts now, its wall time rounded down to a whole second so that
    /// HTTP dates (whole seconds) compare exactly.
    pub fn new() -> Arc<ManualClock> {
        let now = SystemTime::now();
        let seconds = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Arc::new(ManualClock {
            start: Instant::now(),
            wall_start: UNIX_EPOCH + Duration::from_secs(seconds),
            state: Mutex::new(ManualState::default()),
        })
    }

    /// Moves the clock forward without recording a sleep.
    pub fn advance(&self, duration: Duration) {
        self.state().elapsed += duration;
    }

    /// How far the clock has moved since it was made.
    pub fn elapsed(&self) -> Duration {
        self.state().elapsed
    }

    /// Every sleep so far, in order.
    pub fn sleeps(&self) -> Vec<Duration> {
        self.state().sleeps.clone()
    }

    /// The sum of every sleep so far.
    pub fn slept(&self) -> Duration {
        self.state().sleeps.iter().sum()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ManualState> {
        // The state is two plain values: a panic cannot leave it half written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }

    fn wall(&self) -> SystemTime {
        self.wall_start + self.elapsed()
    }

    fn sleep(&self, duration: Duration) {
        let mut state = self.state();
        state.elapsed += duration;
        state.sleeps.push(duration);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        let w0 = clock.wall();
        assert_eq!(clock.now(), t0);
        clock.sleep(Duration::from_secs(30));
        clock.advance(Duration::from_secs(5));
        assert_eq!(clock.now() - t0, Duration::from_secs(35));
        assert_eq!(
            clock.wall().duration_since(w0).ok(),
            Some(Duration::from_secs(35))
        );
        assert_eq!(clock.sleeps(), vec![Duration::from_secs(30)]);
        assert_eq!(clock.slept(), Duration::from_secs(30));
    }

    #[test]
    fn manual_wall_time_is_whole_seconds() {
        let clock = ManualClock::new();
        let since = clock.wall().duration_since(UNIX_EPOCH).unwrap_or_default();
        assert_eq!(since.subsec_nanos(), 0);
    }
}
