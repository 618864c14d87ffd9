//! The store: events, jobs and runs, behind one interface. An event and its jobs are
//! committed together before a webhook is answered; workers claim jobs with a lease.

pub mod ingest;
pub mod retention;
mod schedule;
pub mod sqlite;
mod writer;

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::event::Event;

pub use sqlite::SqliteStore;
pub use writer::Grouping;

/// A storage failure. Callers answer 503 (ingest) or retry later (workers).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store holds a record it cannot read: {0}")]
    Corrupt(String),
    #[error("cannot open the store at {path}: {message}")]
    Open { path: String, message: String },
    #[error("the store could not commit: {0}")]
    Commit(String),
    #[error("{0}")]
    Stopped(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A file part's bytes, stored with the event.
#[derive(Debug, Clone)]
pub struct NewFile {
    pub id: String,
    pub bytes: Bytes,
}

/// A job to create with an event: run `rule` on it, at most `max_attempts` times.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub rule: String,
    pub max_attempts: u32,
}

/// A delivery's dedupe key: a second event with the same key for the same rule within
/// the window is a duplicate.
#[derive(Debug, Clone)]
pub struct DedupeKey {
    pub rule: String,
    pub key: String,
    pub window: Duration,
}

/// An event to store, with its files, its jobs and its dedupe key.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event: Event,
    pub files: Vec<NewFile>,
    pub jobs: Vec<NewJob>,
    pub dedupe: Option<DedupeKey>,
}

/// What storing an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// Stored, with its jobs.
    Stored,
    /// Not stored: the same key was seen with this earlier event.
    Duplicate(String),
}

/// One write of a job, as the write journal keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    pub sequence: u32,
    /// What was written: the operation, the client and the fields, so that a retry
    /// that writes something else does not get this result back.
    pub fingerprint: String,
    /// The answer; `None` while the write is only intended (about to be sent).
    pub result: Option<Value>,
}

/// A job a worker has claimed.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub event_id: String,
    pub rule: String,
    /// This run's attempt number, from 1.
    pub attempt: u32,
    pub max_attempts: u32,
    /// The job this one replays, for a replay.
    pub replay_of: Option<i64>,
}

/// What becomes of a job after a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobNext {
    /// Finished: succeeded or skipped.
    Done,
    /// Failed transiently: run again at this time.
    Retry(DateTime<Utc>),
    /// Failed permanently or out of attempts: a dead letter.
    Dead,
    /// Stopped by a shutdown: due again at once, and the attempt not counted.
    Requeue,
}

/// What one pruning pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Events, each with its files, jobs, runs and journal.
    pub events: u64,
    pub dedupe_keys: u64,
}

/// The state of a job, as the admin API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Pending,
    Running,
    Done,
    Dead,
}

impl JobState {
    pub fn as_str(&self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Dead => "dead",
        }
    }

    fn parse(text: &str) -> Option<JobState> {
        Some(match text {
            "pending" => JobState::Pending,
            "running" => JobState::Running,
            "done" => JobState::Done,
            "dead" => JobState::Dead,
            _ => return None,
        })
    }
}

/// A run as stored: the columns that filter, and the whole record as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct StoredRun {
    pub id: String,
    pub job_id: i64,
    pub event_id: String,
    pub rule: String,
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub record: Value,
}

impl StoredRun {
    /// The run of a claimed job, under `id`, with its status and whole record.
    pub fn of(
        job: &Job,
        id: impl Into<String>,
        status: &str,
        started_at: DateTime<Utc>,
        record: Value,
    ) -> StoredRun {
        StoredRun {
            id: id.into(),
            job_id: job.id,
            event_id: job.event_id.clone(),
            rule: job.rule.clone(),
            status: status.to_owned(),
            started_at,
            record,
        }
    }
}

/// An event with its jobs' states, for listings.
#[derive(Debug, Clone, Serialize)]
pub struct EventSummary {
    pub id: String,
    pub source: String,
    pub path: String,
    pub received_at: DateTime<Utc>,
    pub jobs: Vec<JobSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    pub id: i64,
    pub rule: String,
    pub state: JobState,
    pub attempts: u32,
}

/// Filters of a run listing; `None` matches all.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub rule: Option<String>,
    pub status: Option<String>,
    pub event_id: Option<String>,
    pub client_id: Option<String>,
    pub limit: usize,
}

/// A tick of a scheduled rule to record, and what to do if this process is the first
/// to record it.
#[derive(Debug, Clone)]
pub struct NewTick {
    pub rule: String,
    /// The instant the tick was due; with the rule, the tick's identity.
    pub scheduled_for: DateTime<Utc>,
    pub action: TickAction,
}

/// What recording a tick does.
#[derive(Debug, Clone)]
pub enum TickAction {
    /// Stores the event with one job of the rule; with `skip_while_unfinished`, records
    /// the tick as skipped instead while a scheduled job of the rule is pending or
    /// running.
    Fire {
        event: Box<Event>,
        max_attempts: u32,
        skip_while_unfinished: bool,
    },
    /// Records the tick as missed: no event.
    Miss,
}

/// What became of a tick. `missed` counts the ticks between the rule's previous handled
/// tick and this one, which no process handled: they are added to the rule's skipped
/// ticks along with this one's outcome, by whichever process records the tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickOutcome {
    Fired {
        event_id: String,
        missed: u64,
    },
    /// Skipped because the rule's previous scheduled job is unfinished.
    Overlapped {
        missed: u64,
    },
    Missed {
        missed: u64,
    },
    /// This tick, or a later one, was already recorded (by another process, say):
    /// nothing was done.
    AlreadyHandled,
}

/// The schedule status of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduleState {
    pub rule: String,
    /// Ticks up to this instant are handled: the last one recorded, or, before the
    /// first, when the rule was first scheduled.
    pub handled_through: DateTime<Utc>,
    /// The last tick recorded and what became of it (`fired`, `overlap`, `missed`).
    pub last_tick: Option<DateTime<Utc>>,
    pub last_outcome: Option<String>,
    pub fired: u64,
    /// Ticks skipped while the previous run was unfinished.
    pub skipped_overlap: u64,
    /// Ticks that fell while no service was running and did not run.
    pub skipped_missed: u64,
}

/// The interface both store engines implement.
pub trait Store: Send + Sync {
    /// Commits a batch of events, each with its files and jobs, in one transaction:
    /// the group commit of concurrent deliveries.
    fn insert_batch(&self, batch: Vec<NewEvent>) -> Result<Vec<Inserted>>;

    /// Commits one event, its files and its jobs.
    fn insert_event(&self, event: &Event, files: &[NewFile], jobs: &[NewJob]) -> Result<()> {
        self.insert_batch(vec![NewEvent {
            event: event.clone(),
            files: files.to_vec(),
            jobs: jobs.to_vec(),
            dedupe: None,
        }])
        .map(|_| ())
    }

    fn event(&self, id: &str) -> Result<Option<Event>>;

    /// The newest events first, optionally of one rule's jobs.
    fn events(&self, rule: Option<&str>, limit: usize) -> Result<Vec<EventSummary>>;

    /// Claims the next job that is due, or whose lease expired, for `lease`.
    fn claim(&self, lease: Duration) -> Result<Option<Job>>;

    /// Records a run and moves its job on.
    fn finish(&self, job: &Job, run: &StoredRun, next: JobNext) -> Result<()>;

    /// Puts a claimed job back in the queue until `until`, without a run and without
    /// counting the attempt: for a job that cannot run yet.
    fn postpone(&self, job_id: i64, until: DateTime<Utc>) -> Result<()>;

    /// Puts jobs left running by a previous process back in the queue.
    fn requeue_running(&self) -> Result<u64>;

    /// Extends the lease of a running job to `lease` from now: its worker is alive.
    fn renew_lease(&self, job_id: i64, lease: Duration) -> Result<()>;

    fn runs(&self, filter: &RunFilter) -> Result<Vec<StoredRun>>;

    fn run(&self, id: &str) -> Result<Option<StoredRun>>;

    /// Jobs waiting to run, due or not.
    fn pending_jobs(&self) -> Result<u64>;

    /// The bytes of a file uploaded with an event, by its id.
    fn uploaded_file(&self, id: &str) -> Result<Option<bytes::Bytes>>;

    /// Whether the store answers: for readiness.
    fn ping(&self) -> Result<()>;

    // The write journal and replays.

    /// The writes a job recorded in earlier attempts, in sequence order.
    fn journal(&self, job_id: i64) -> Result<Vec<JournalEntry>>;

    /// Records one write of a job: as intended before it is sent (on disk when this
    /// returns), then with its result as soon as it succeeded (on disk no later than the
    /// job's next record or its end).
    fn record_write(&self, job_id: i64, entry: &JournalEntry) -> Result<()>;

    /// Forgets an intended write that was refused: it made no change.
    fn forget_write(&self, job_id: i64, sequence: u32) -> Result<()>;

    /// Queues an event again for a rule (or every rule that had a job on it), as new
    /// jobs linked to the last job of each, each allowed `attempts(rule)` attempts;
    /// returns the new job ids.
    fn replay_event(
        &self,
        event_id: &str,
        rule: Option<&str>,
        attempts: &dyn Fn(&str) -> u32,
    ) -> Result<Vec<i64>>;

    /// Queues the dead letters of a rule not yet replayed again, oldest first, at most
    /// `limit`, each allowed `attempts` attempts, in one transaction: two callers at
    /// once never queue one dead letter twice. Returns the new job ids.
    fn replay_dead(&self, rule: &str, limit: usize, attempts: u32) -> Result<Vec<i64>>;

    /// The state of a job.
    fn job_state(&self, job_id: i64) -> Result<Option<JobState>>;

    /// Deletes at most `limit` events received before `before` whose jobs are all done
    /// (dead letters count once replayed), each with its files, jobs, runs and journal,
    /// and at most `limit` dedupe keys seen before `dedupe_before`.
    fn prune(
        &self,
        before: DateTime<Utc>,
        dedupe_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Pruned>;

    // Schedules.

    /// Starts tracking a scheduled rule: the first call for a rule records `now` as the
    /// instant its ticks are handled through; later calls change nothing. Returns the
    /// rule's state.
    fn schedule_start(&self, rule: &str, now: DateTime<Utc>) -> Result<ScheduleState>;

    /// Records a tick under (rule, scheduled time), once in the whole store: only the
    /// first process to record it, and only if no later tick of the rule is recorded,
    /// carries out its action, in the same transaction. `missed_between(a, b)` counts
    /// the rule's ticks strictly between two instants.
    fn record_tick(
        &self,
        tick: &NewTick,
        missed_between: &dyn Fn(DateTime<Utc>, DateTime<Utc>) -> u64,
    ) -> Result<TickOutcome>;

    /// The schedule state of every rule that has one.
    fn schedule_states(&self) -> Result<Vec<ScheduleState>>;
}
