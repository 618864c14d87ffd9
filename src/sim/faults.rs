//! The simulator's misbehaviour, on purpose: latency, random 5xx, a rate limit per key,
//! pagination quirks, and scripted faults that tests queue one request at a time.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One scripted fault, taken by the next request to a `/v2` route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Serve the request as usual: a place in the queue for a request to go through.
    Pass,
    /// Answer this status without doing anything; `retry_after` is sent as is.
    Status {
        status: u16,
        retry_after: Option<String>,
    },
    /// Wait this long without doing anything, then answer 504.
    Hang(Duration),
    /// Do the work, then wait this long before answering: a write whose answer is lost
    /// by a client that gives up first.
    AnswerLate(Duration),
}

/// How list answers bend the pagination rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Paging {
    /// As the API documents it.
    #[default]
    Faithful,
    /// `next` names the current page: a client that trusts it loops.
    NextIsCurrent,
    /// Every page number answers the first page, with a `next` after it.
    RepeatFirst,
    /// No `next` or `last`, only the record count.
    CountOnly,
}

/// The fault switches and counters of one simulator.
#[derive(Debug)]
pub struct Faults {
    latency: Duration,
    fail_rate: f64,
    fail_status: u16,
    rate_limit: u32,
    retry_after: bool,
    paging: Mutex<Paging>,
    script: Mutex<VecDeque<Fault>>,
    windows: Mutex<HashMap<String, (Instant, u32)>>,
    counts: Mutex<BTreeMap<String, u64>>,
}

/// What the fault layer decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it.
    Serve,
    /// Serve it, then wait before answering.
    ServeLate(Duration),
    /// Answer this status without serving it.
    Refuse {
        status: u16,
        retry_after: Option<String>,
    },
    /// Over the rate limit: 429, with the seconds until the window ends when enabled.
    Limited { retry_after: Option<u64> },
    /// Wait, then answer 504.
    Hang(Duration),
}

impl Faults {
    /// Switches set once, from the command line or a test.
    pub fn new(
        latency: Duration,
        fail_rate: f64,
        fail_status: u16,
        rate_limit: u32,
        retry_after: bool,
    ) -> Faults {
        Faults {
            latency,
            fail_rate: fail_rate.clamp(0.0, 1.0),
            fail_status,
            rate_limit,
            retry_after,
            paging: Mutex::new(Paging::Faithful),
            script: Mutex::new(VecDeque::new()),
            windows: Mutex::new(HashMap::new()),
            counts: Mutex::new(BTreeMap::new()),
        }
    }

    /// The fixed wait before every answer.
    pub fn latency(&self) -> Duration {
        self.latency
    }

    /// Queues faults for the next requests, in order.
    pub fn push(&self, faults: impl IntoIterator<Item = Fault>) {
        lock(&self.script).extend(faults);
    }

    /// Sets how list answers paginate.
    pub fn set_paging(&self, paging: Paging) {
        *lock(&self.paging) = paging;
    }

    pub fn paging(&self) -> Paging {
        *lock(&self.paging)
    }

    /// Counts one request under `name` (`GET /v2/contacts`, `429`, ...).
    pub fn count(&self, name: &str) {
        *lock(&self.counts).entry(name.to_owned()).or_default() += 1;
    }

    /// Requests counted so far, by name.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        lock(&self.counts).clone()
    }

    /// Forgets the counts.
    pub fn reset_counts(&self) {
        lock(&self.counts).clear();
    }

    /// Decides what happens to a request of `company`: scripted faults first, then the
    /// rate limit (a fixed window of one minute a key), then the random failures.
    pub fn verdict(&self, company: &str) -> Verdict {
        if let Some(fault) = lock(&self.script).pop_front() {
            return match fault {
                Fault::Pass => Verdict::Serve,
                Fault::Status {
                    status,
                    retry_after,
                } => Verdict::Refuse {
                    status,
                    retry_after,
                },
                Fault::Hang(wait) => Verdict::Hang(wait),
                Fault::AnswerLate(wait) => Verdict::ServeLate(wait),
            };
        }
        if self.rate_limit > 0 {
            let now = Instant::now();
            let mut windows = lock(&self.windows);
            let (start, used) = windows.entry(company.to_owned()).or_insert((now, 0));
            if now.duration_since(*start) >= Duration::from_secs(60) {
                *start = now;
                *used = 0;
            }
            if *used >= self.rate_limit {
                let left = Duration::from_secs(60).saturating_sub(now.duration_since(*start));
                // Rounded up: a client that waits exactly this long finds a new window.
                let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                return Verdict::Limited {
                    retry_after: self.retry_after.then_some(seconds.max(1)),
                };
            }
            *used += 1;
        }
        if self.fail_rate > 0.0 && fastrand::f64() < self.fail_rate {
            return Verdict::Refuse {
                status: self.fail_status,
                retry_after: None,
            };
        }
        Verdict::Serve
    }
}

/// A poisoned lock still holds consistent data here: every critical section is a
/// single assignment or collection operation.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scripted_faults_come_first_and_in_order() {
        let faults = Faults::new(Duration::ZERO, 0.0, 503, 0, true);
        faults.push([
            Fault::Status {
                status: 503,
                retry_after: Some("2".into()),
            },
            Fault::Hang(Duration::from_millis(5)),
        ]);
        assert_eq!(
            faults.verdict("a"),
            Verdict::Refuse {
                status: 503,
                retry_after: Some("2".into())
            }
        );
        assert_eq!(faults.verdict("a"), Verdict::Hang(Duration::from_millis(5)));
        assert_eq!(faults.verdict("a"), Verdict::Serve);
    }

    #[test]
    fn the_rate_limit_counts_each_key_alone() {
        let faults = Faults::new(Duration::ZERO, 0.0, 503, 2, true);
        assert_eq!(faults.verdict("a"), Verdict::Serve);
        assert_eq!(faults.verdict("a"), Verdict::Serve);
        match faults.verdict("a") {
            Verdict::Limited {
                retry_after: Some(s),
            } => assert!((1..=60).contains(&s), "{s}"),
            other => panic!("expected a 429, got {other:?}"),
        }
        assert_eq!(faults.verdict("b"), Verdict::Serve);
        let quiet = Faults::new(Duration::ZERO, 0.0, 503, 1, false);
        assert_eq!(quiet.verdict("a"), Verdict::Serve);
        assert_eq!(quiet.verdict("a"), Verdict::Limited { retry_after: None });
    }

    #[test]
    fn a_fail_rate_of_one_always_fails_and_zero_never() {
        let always = Faults::new(Duration::ZERO, 1.0, 502, 0, true);
        let never = Faults::new(Duration::ZERO, 0.0, 502, 0, true);
        for _ in 0..50 {
            assert_eq!(
                always.verdict("a"),
                Verdict::Refuse {
                    status: 502,
                    retry_after: None
                }
            );
            assert_eq!(never.verdict("a"), Verdict::Serve);
        }
    }
}
