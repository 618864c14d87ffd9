//! Schedule ticks: the scheduler that turns each due tick of every scheduled rule into
//! one event, once in the whole store however many services share it, and applies the
//! rules' overlap and catch-up policies.
//!
//! Each rule has a cursor: the instant through which its ticks are handled. When the
//! clock passes the rule's next tick, the latest tick due is recorded in the store under
//! (rule, scheduled time) with its event and job, in one transaction; a process that
//! finds the tick already recorded does nothing. Ticks between the cursor and the latest
//! one (downtime, a suspended host) are counted as missed by whoever records the tick.
//! A tick found more than [`ON_TIME`] after it was due runs only with `catch_up: latest`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::event::{Event, Tick};
use crate::rules::{CatchUp, Overlap, Rule, RuleSet, ScheduleTrigger};
use crate::store::{NewTick, Store, StoreError, TickAction, TickOutcome};
use crate::worker::{SharedRules, Wake, current_rules};

/// How late a tick may be handled and still count as on time. Beyond it, a tick is a
/// missed one: it runs only with `catch_up: latest`.
pub const ON_TIME: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// The longest the scheduler sleeps before reading the wall clock again, so that a
/// clock that jumps (a suspended host, a corrected clock) is noticed within a minute.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// How long the scheduler waits before trying a rule again after the store failed.
const RETRY_AFTER: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// The most missed ticks counted between two handled ones: enough for a schedule
/// that fires every minute and a service down for two months.
const MAX_MISSED_COUNT: u64 = 100_000;

/// Where the scheduler reads the time.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Tokio's clock, read as a wall time from a chosen start. Under `tokio::time::pause` it
/// moves only as tasks sleep, so tests run days of schedule in no time.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads `wall` now. Call it inside a runtime.
    pub fn starting_at(wall: DateTime<Utc>) -> TokioClock {
        TokioClock {
            wall,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now() - self.start;
        chrono::TimeDelta::from_std(elapsed)
            .ok()
            .and_then(|d| self.wall.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// What the scheduler did with one tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TickReport {
    pub rule: String,
    pub scheduled_for: DateTime<Utc>,
    pub outcome: TickOutcome,
}

/// One scheduled rule and how far its ticks are handled.
#[derive(Debug)]
struct Tracked {
    rule: Arc<Rule>,
    cursor: DateTime<Utc>,
    /// Set after a store failure: the rule is not tried again before then.
    retry_at: Option<DateTime<Utc>>,
}

/// The ticks of every scheduled rule of a rule set.
pub struct Scheduler {
    store: Arc<dyn Store>,
    tracked: HashMap<String, Tracked>,
}

impl fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("rules", &self.tracked.len())
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    pub fn new(store: Arc<dyn Store>) -> Scheduler {
        Scheduler {
            store,
            tracked: HashMap::new(),
        }
    }

    /// Follows a rule set: a scheduled rule seen for the first time continues from the
    /// store's record of it (or starts now, if it has none); a rule whose schedule
    /// changed continues from the same record; a rule no longer loaded is dropped.
    pub fn sync(&mut self, rules: &RuleSet, now: DateTime<Utc>) {
        self.tracked.retain(|name, _| {
            rules
                .get(name)
                .is_some_and(|rule| rule.schedule().is_some())
        });
        for rule in rules.rules() {
            let Some(trigger) = rule.schedule() else {
                continue;
            };
            if let Some(tracked) = self.tracked.get_mut(&rule.name) {
                tracked.rule = rule.clone();
                continue;
            }
            match self.store.schedule_start(&rule.name, now) {
                Ok(state) => {
                    let next = trigger
                        .schedule
                        .next_after(state.handled_through.max(now))
                        .map(|f| f.at);
                    info!(
                        rule = %rule.name,
                        cron = trigger.cron(),
                        timezone = trigger.timezone().name(),
                        handled_through = %state.handled_through,
                        next = ?next,
                        "schedule started"
                    );
                    self.tracked.insert(
                        rule.name.clone(),
                        Tracked {
                            rule: rule.clone(),
                            cursor: state.handled_through,
                            retry_at: None,
                        },
                    );
                }
                Err(e) => {
                    // Not tracked yet: the next sync tries again.
                    error!(rule = %rule.name, error = %e, "cannot read the schedule's state; trying again shortly");
                }
            }
        }
    }

    /// The rules being scheduled, by name.
    pub fn rules(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tracked.keys().cloned().collect();
        names.sort();
        names
    }

    /// When the next tick of any rule is due (or a failed one is tried again).
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.tracked
            .values()
            .filter_map(|t| {
                let next = t.rule.schedule()?.schedule.next_after(t.cursor)?.at;
                Some(t.retry_at.map_or(next, |r| r.max(next)))
            })
            .min()
    }

    /// Handles the ticks due at `now`: for each rule, the latest tick since its cursor
    /// is recorded (and fired, skipped or counted as missed); earlier ones are counted
    /// as missed. Blocking: it writes to the store.
    pub fn run_due(&mut self, now: DateTime<Utc>) -> Vec<TickReport> {
        let mut reports = Vec::new();
        let mut names: Vec<&String> = self.tracked.keys().collect();
        names.sort();
        let names: Vec<String> = names.into_iter().cloned().collect();
        for name in names {
            let Some(tracked) = self.tracked.get_mut(&name) else {
                continue;
            };
            if tracked.retry_at.is_some_and(|r| r > now) {
                continue;
            }
            match handle_rule(self.store.as_ref(), tracked, now) {
                Ok(Some(report)) => {
                    tracked.cursor = report.scheduled_for;
                    tracked.retry_at = None;
                    log_report(&report, now);
                    reports.push(report);
                }
                Ok(None) => {}
                Err(e) => {
                    tracked.retry_at = Some(now + RETRY_AFTER);
                    error!(rule = %name, error = %e, "cannot record a schedule tick; trying again in 5 s");
                }
            }
        }
        reports
    }
}

/// Records the latest tick of one rule due at `now`, if there is one.
fn handle_rule(
    store: &dyn Store,
    tracked: &Tracked,
    now: DateTime<Utc>,
) -> Result<Option<TickReport>, StoreError> {
    let rule = &tracked.rule;
    let Some(trigger) = rule.schedule() else {
        return Ok(None);
    };
    let Some(fire) = trigger.schedule.latest_in(tracked.cursor, now) else {
        return Ok(None);
    };
    let on_time = now - fire.at <= ON_TIME;
    let action = if on_time || trigger.catch_up == CatchUp::Latest {
        TickAction::Fire {
            event: Box::new(tick_event(trigger, fire.at, now)),
            max_attempts: rule.retry.attempts,
            skip_while_unfinished: trigger.overlap == Overlap::Skip,
        }
    } else {
        TickAction::Miss
    };
    let tick = NewTick {
        rule: rule.name.clone(),
        scheduled_for: fire.at,
        action,
    };
    let schedule = &trigger.schedule;
    let outcome = store.record_tick(&tick, &|after, before| {
        schedule.count_between(after, before, MAX_MISSED_COUNT)
    })?;
    Ok(Some(TickReport {
        rule: rule.name.clone(),
        scheduled_for: fire.at,
        outcome,
    }))
}

/// The event of a rule's tick due at `scheduled_for`, received at `now`.
pub fn tick_event(
    trigger: &ScheduleTrigger,
    scheduled_for: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Event {
    let tick = Tick {
        cron: trigger.cron().to_owned(),
        timezone: trigger.timezone().name().to_owned(),
        scheduled_for,
    };
    Event::scheduled(tick, now)
}

fn log_report(report: &TickReport, now: DateTime<Utc>) {
    let (rule, at) = (&report.rule, report.scheduled_for);
    let late_ms = (now - at).num_milliseconds();
    match &report.outcome {
        TickOutcome::Fired { event_id, missed } => {
            if *missed > 0 {
                warn!(rule = %rule, scheduled_for = %at, missed, "ticks were missed while no service ran; running the latest once");
            }
            info!(rule = %rule, scheduled_for = %at, event_id = %event_id, late_ms, "schedule tick fired");
        }
        TickOutcome::Overlapped { missed } => info!(
            rule = %rule, scheduled_for = %at, missed,
            "schedule tick skipped: the rule's previous run is unfinished"
        ),
        TickOutcome::Missed { missed } => warn!(
            rule = %rule, scheduled_for = %at, missed = missed + 1,
            "ticks were missed while no service ran; catch_up is none, so none runs"
        ),
        TickOutcome::AlreadyHandled => {
            debug!(rule = %rule, scheduled_for = %at, "schedule tick already recorded by another service")
        }
    }
}

/// A running scheduler task.
#[derive(Debug)]
pub struct SchedulerHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl SchedulerHandle {
    /// Stops the scheduler and waits for it; a tick being recorded finishes first.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if self.task.await.is_err() {
            error!("the scheduler task panicked");
        }
    }
}

/// Starts the scheduler on the runtime: it follows the rules in force, records due
/// ticks and wakes the workers when a tick stored a job.
pub fn spawn(
    store: Arc<dyn Store>,
    rules: SharedRules,
    wake: Arc<Wake>,
    clock: Arc<dyn Clock>,
) -> SchedulerHandle {
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(Scheduler::new(store), rules, wake, clock, stopped));
    SchedulerHandle { stop, task }
}

async fn run(
    mut scheduler: Scheduler,
    rules: SharedRules,
    wake: Arc<Wake>,
    clock: Arc<dyn Clock>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let now = clock.now();
        let set = current_rules(&rules);
        // The store is blocking: the work runs off the async threads.
        let step = tokio::task::spawn_blocking(move || {
            scheduler.sync(&set, now);
            let reports = scheduler.run_due(now);
            (scheduler, reports)
        })
        .await;
        let reports = match step {
            Ok((back, reports)) => {
                scheduler = back;
                reports
            }
            Err(e) => {
                error!(error = %e, "the scheduler failed; no more ticks fire until a restart");
                return;
            }
        };
        if reports
            .iter()
            .any(|r| matches!(r.outcome, TickOutcome::Fired { .. }))
        {
            wake.notify();
        }

        // Until the next tick; a tick already due (the clock moved on meanwhile) at once.
        let wait = match scheduler.next_due() {
            Some(due) => (due - clock.now()).to_std().unwrap_or(Duration::ZERO),
            None => MAX_SLEEP,
        };
        let wait = wait.min(MAX_SLEEP);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests;
