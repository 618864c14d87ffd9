//! Workers: threads that claim jobs from the store, run the rule's script on the
//! event, record the run, and decide whether the job is done, retried or dead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};
use tracing::{debug, error, info, info_span, warn};

use crate::clients::Backend;
use crate::clients::session::{Mode, Recorded, Session, WriteJournal};
use crate::rules::{Rule, RuleSet};
use crate::script::{self, Outcome, RunStatus};
use crate::store::{Job, JobNext, JournalEntry, Store, StoreError, StoredRun};

/// The rules in force, swapped whole when they are reloaded.
pub type SharedRules = Arc<RwLock<Arc<RuleSet>>>;

/// How long a worker waits for a wake-up before it looks for due jobs again (retries
/// become due without anyone waking the workers).
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Wakes idle workers when a new job is stored.
#[derive(Debug, Default)]
pub struct Wake {
    pending: Mutex<bool>,
    signal: Condvar,
}

impl Wake {
    pub fn notify(&self) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.signal.notify_all();
    }

    fn wait(&self, timeout: Duration) {
        let guard = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let (mut guard, _) = self
            .signal
            .wait_timeout_while(guard, timeout, |pending| !*pending)
            .unwrap_or_else(|p| p.into_inner());
        *guard = false;
    }
}

/// What every worker shares.
#[derive(Clone)]
pub struct Context {
    pub store: Arc<dyn Store>,
    pub rules: SharedRules,
    pub backend: Arc<dyn Backend>,
    pub wake: Arc<Wake>,
    /// Set on shutdown: no new job is claimed.
    pub stopping: Arc<AtomicBool>,
    /// Set when the grace period is over: running scripts end at once.
    pub cancel: Arc<AtomicBool>,
    pub metrics: Arc<crate::admin::metrics::Metrics>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// A running pool of worker threads.
#[derive(Debug)]
pub struct Pool {
    context: Context,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts `size` workers.
    pub fn start(context: Context, size: usize) -> std::io::Result<Pool> {
        let mut threads = Vec::new();
        for n in 0..size.max(1) {
            let ctx = context.clone();
            let handle = script::with_script_stack(
                std::thread::Builder::new().name(format!("worker-{n}")),
                move || worker_loop(&ctx),
            )?;
            threads.push(handle);
        }
        Ok(Pool { context, threads })
    }

    /// Stops claiming jobs, lets running ones finish within `grace`, then cancels the
    /// rest; cancelled jobs run again after the next start.
    pub fn shutdown(self, grace: Duration) {
        self.context.stopping.store(true, Ordering::SeqCst);
        self.context.wake.notify();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && self.threads.iter().any(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.context.cancel.store(true, Ordering::SeqCst);
        for thread in self.threads {
            if thread.join().is_err() {
                error!("a worker thread panicked");
            }
        }
    }
}

fn worker_loop(ctx: &Context) {
    // One lease keeper for the life of the worker, told which job runs now.
    let slot: LeaseSlot = Arc::default();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let keeper_slot = slot.clone();
        let keeper = std::thread::Builder::new()
            .name("lease".into())
            .spawn_scoped(scope, move || keep_leases(ctx, &keeper_slot, &stopped));
        if let Err(e) = &keeper {
            warn!(error = %e, "cannot start the lease keeper; jobs keep their first lease");
        }
        LEASE_SLOT.with(|s| *s.borrow_mut() = Some(slot.clone()));
        claim_and_run(ctx);
        LEASE_SLOT.with(|s| *s.borrow_mut() = None);
        drop(stop);
    });
}

/// The job a worker runs now, for its lease keeper.
type LeaseSlot = Arc<std::sync::Mutex<Option<i64>>>;

thread_local! {
    /// The lease slot of a worker thread; other threads have none.
    static LEASE_SLOT: std::cell::RefCell<Option<LeaseSlot>> = const { std::cell::RefCell::new(None) };
}

/// Renews the lease of the slot's job every [`RENEW_EVERY`] until told to stop.
fn keep_leases(ctx: &Context, slot: &LeaseSlot, stopped: &std::sync::mpsc::Receiver<()>) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(RENEW_EVERY) {
        let job = *slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(job) = job
            && let Err(e) = ctx.store.renew_lease(job, LEASE)
        {
            warn!(error = %e, job, "cannot renew the lease of a running job");
        }
    }
}

fn claim_and_run(ctx: &Context) {
    while !ctx.stopping.load(Ordering::SeqCst) {
        let lease = Duration::from_secs(60) + max_timeout(ctx);
        match ctx.store.claim(lease) {
            Ok(Some(job)) => execute(ctx, job),
            Ok(None) => ctx.wake.wait(IDLE_POLL),
            Err(e) => {
                error!(error = %e, "cannot claim jobs; trying again in a second");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// How long a job of a rule that is not loaded waits, while a rule file fails to load,
/// before it is looked at again.
const WAIT_FOR_RULE: Duration = Duration::from_secs(60);

/// How long a claim lasts without renewal: a worker that dies lets its job go after this.
const LEASE: Duration = Duration::from_secs(60);

/// How often a running job's lease is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(15);

/// Runs `f` while a helper thread renews the job's lease, so that a run that takes long
/// (a slow or rate-limited API) is never taken for abandoned and run a second time.
fn holding_lease<T>(ctx: &Context, job: &Job, f: impl FnOnce() -> T) -> T {
    // On a worker thread, its keeper renews the lease.
    if let Some(slot) = LEASE_SLOT.with(|s| s.borrow().clone()) {
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(job.id);
        let out = f();
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
        return out;
    }
    // Elsewhere (a job run outside the pool): a keeper for this run alone.
    let slot: LeaseSlot = Arc::new(std::sync::Mutex::new(Some(job.id)));
    let (done, finished) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let keeper = std::thread::Builder::new()
            .name("lease".into())
            .spawn_scoped(scope, move || keep_leases(ctx, &slot, &finished));
        if let Err(e) = &keeper {
            warn!(error = %e, "cannot start the lease keeper; the job keeps its first lease");
        }
        let out = f();
        drop(done);
        out
    })
}

fn max_timeout(ctx: &Context) -> Duration {
    current_rules(&ctx.rules)
        .rules()
        .iter()
        .map(|r| r.limits.timeout)
        .max()
        .unwrap_or(Duration::from_secs(10))
}

/// The rule set in force.
pub fn current_rules(rules: &SharedRules) -> Arc<RuleSet> {
    rules.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Runs one claimed job to its end and records it.
pub fn execute(ctx: &Context, job: Job) {
    let run_id = uuid::Uuid::now_v7().to_string();
    let span = info_span!("job", rule = %job.rule, event_id = %job.event_id, run_id = %run_id);
    let _entered = span.enter();
    let started_at = Utc::now();

    let rules = current_rules(&ctx.rules);
    let dead = |message: &str| {
        let record = failure_record(&job, message);
        finish(
            ctx,
            &job,
            &run_id,
            started_at,
            RunStatus::Failed,
            record,
            JobNext::Dead,
        );
    };
    let event = match ctx.store.event(&job.event_id) {
        Ok(Some(event)) => event,
        Ok(None) => {
            dead("the event of this job is missing from the store");
            return;
        }
        Err(StoreError::Corrupt(detail)) => {
            // Reading again will not help: the job ends as a dead letter that says why.
            error!(error = %detail, "the event of this job cannot be read; the job is a dead letter");
            dead(&format!(
                "the event of this job cannot be read back from the store: {detail}"
            ));
            return;
        }
        Err(e) => {
            // The lease runs out and the job is claimed again.
            error!(error = %e, "cannot read the event; the job will be tried again");
            return;
        }
    };
    let Some(rule) = rules.get(&job.rule).cloned() else {
        if rules.has_errors() {
            // Its file may be one that fails to load: the job waits for it to be mended
            // (a dead letter would need replaying by hand, job by job).
            debug!("the rule is not loaded while a rule file fails to load; the job waits");
            let until = Utc::now() + chrono::Duration::from_std(WAIT_FOR_RULE).unwrap_or_default();
            if let Err(e) = ctx.store.postpone(job.id, until) {
                error!(error = %e, "cannot put the job back; it runs again when its lease ends");
            }
            return;
        }
        dead(&format!("rule {} is no longer loaded", job.rule));
        return;
    };

    // Writes that earlier attempts of this job made are not made again.
    let entries = match ctx.store.journal(job.id) {
        Ok(entries) => entries,
        Err(e) => {
            error!(error = %e, "cannot read the write journal; the job will be tried again");
            return;
        }
    };
    let journal = StoreJournal {
        store: ctx.store.clone(),
        job_id: job.id,
        entries,
    };
    let session = Arc::new(
        Session::new(
            ctx.backend.clone(),
            Mode::Live,
            rule.limits.max_api_calls,
            rule.limits.max_changes,
        )
        .with_journal(Box::new(journal))
        .with_files(Arc::new(StoreFiles(ctx.store.clone()))),
    );
    let mut event = event;
    if job.replay_of.is_some() {
        event.source = crate::event::Source::Replay;
    }
    let outcome = holding_lease(ctx, &job, || {
        script::run(
            &rule,
            &event.to_script_value(),
            session.clone(),
            Some(ctx.cancel.clone()),
        )
    });
    // A run cut short by the end of the grace period ran as long as it could: it does
    // not count as an attempt, and runs again after the next start.
    let next = if outcome.status == RunStatus::Failed && ctx.cancel.load(Ordering::SeqCst) {
        JobNext::Requeue
    } else {
        next_step(&rule, &job, &outcome)
    };
    let record = run_record(&job, &run_id, started_at, &outcome, &session, next);
    match outcome.status {
        RunStatus::Failed => {
            let message = outcome
                .error
                .as_ref()
                .map(|e| e.to_string())
                .unwrap_or_default();
            match next {
                JobNext::Retry(at) => {
                    warn!(attempt = job.attempt, retry_at = %at, error = %message, "run failed; retrying")
                }
                JobNext::Requeue => {
                    info!(
                        attempt = job.attempt,
                        "run stopped by the shutdown; it runs again after the next start"
                    )
                }
                _ => {
                    warn!(attempt = job.attempt, error = %message, "run failed; the job is a dead letter")
                }
            }
        }
        status => debug!(
            status = status.as_str(),
            millis = outcome.duration.as_millis() as u64,
            "run finished"
        ),
    }
    finish(ctx, &job, &run_id, started_at, outcome.status, record, next);
}

/// The write journal of one job, over the store.
struct StoreJournal {
    store: Arc<dyn Store>,
    job_id: i64,
    entries: Vec<JournalEntry>,
}

impl WriteJournal for StoreJournal {
    fn earlier(&self) -> Vec<(u32, Recorded)> {
        self.entries
            .iter()
            .map(|entry| {
                let fingerprint = entry.fingerprint.clone();
                let recorded = match &entry.result {
                    Some(result) => Recorded::Done {
                        fingerprint,
                        result: result.clone(),
                    },
                    None => Recorded::Intended { fingerprint },
                };
                (entry.sequence, recorded)
            })
            .collect()
    }

    fn intend(&self, sequence: u32, fingerprint: &str) -> Result<(), String> {
        let entry = JournalEntry {
            sequence,
            fingerprint: fingerprint.to_owned(),
            result: None,
        };
        self.store
            .record_write(self.job_id, &entry)
            .map_err(|e| e.to_string())
    }

    fn record(&self, sequence: u32, fingerprint: &str, result: &Value) {
        let entry = JournalEntry {
            sequence,
            fingerprint: fingerprint.to_owned(),
            result: Some(result.clone()),
        };
        if let Err(e) = self.store.record_write(self.job_id, &entry) {
            // The write was made and its intent is journaled: a retry looks the client
            // up instead of creating it again.
            error!(error = %e, job_id = self.job_id, "cannot record a write in the journal");
        }
    }

    fn forget(&self, sequence: u32) {
        if let Err(e) = self.store.forget_write(self.job_id, sequence) {
            error!(error = %e, job_id = self.job_id, "cannot clear a refused write from the journal");
        }
    }
}

/// Done, retried later, or dead, from how the run ended.
fn next_step(rule: &Rule, job: &Job, outcome: &Outcome) -> JobNext {
    if outcome.status != RunStatus::Failed {
        return JobNext::Done;
    }
    if !outcome.retryable {
        return JobNext::Dead;
    }
    let attempts = job.max_attempts.max(1).min(rule.retry.attempts.max(1));
    if job.attempt >= attempts {
        return JobNext::Dead;
    }
    let base = rule.retry.delay_after(job.attempt);
    // Full jitter on half the delay, so that retries of one outage spread out.
    let jitter = base.mul_f64(fastrand::f64() * 0.5);
    let delay = base / 2 + jitter;
    let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::seconds(5));
    JobNext::Retry(Utc::now() + delay)
}

fn run_record(
    job: &Job,
    run_id: &str,
    started_at: chrono::DateTime<Utc>,
    outcome: &Outcome,
    session: &Session,
    next: JobNext,
) -> Value {
    let next = match next {
        JobNext::Done => json!({"state": "done"}),
        JobNext::Dead => json!({"state": "dead"}),
        JobNext::Retry(at) => json!({"state": "retry", "at": at}),
        JobNext::Requeue => json!({"state": "requeued"}),
    };
    json!({
        "id": run_id,
        "job_id": job.id,
        "event_id": job.event_id,
        "rule": job.rule,
        "attempt": job.attempt,
        "replay_of": job.replay_of,
        "mode": "live",
        "status": outcome.status,
        "reason": outcome.reason,
        "started_at": started_at,
        "duration_ms": outcome.duration.as_millis() as u64,
        "error": outcome.error,
        "retryable": outcome.retryable,
        "next": next,
        "logs": outcome.logs,
        "api_calls": session.calls(),
        "changes": session.changes(),
        "progress": session.progress(),
    })
}

fn failure_record(job: &Job, message: &str) -> Value {
    json!({
        "job_id": job.id,
        "event_id": job.event_id,
        "rule": job.rule,
        "attempt": job.attempt,
        "status": "failed",
        "error": {"message": message},
        "logs": [],
        "api_calls": [],
        "changes": [],
    })
}

fn finish(
    ctx: &Context,
    job: &Job,
    run_id: &str,
    started_at: chrono::DateTime<Utc>,
    status: RunStatus,
    record: Value,
    next: JobNext,
) {
    ctx.metrics.run(&job.rule, status.as_str());
    let run = StoredRun::of(job, run_id, status.as_str(), started_at, record);
    if let Err(e) = ctx.store.finish(job, &run, next) {
        error!(error = %e, "cannot record the run; the job will run again when its lease ends");
    } else if next == JobNext::Dead {
        info!(attempt = job.attempt, "job moved to the dead letters");
    }
}

/// The files of delivered events, read from the store.
struct StoreFiles(Arc<dyn Store>);

impl crate::clients::session::FileSource for StoreFiles {
    fn file_bytes(&self, id: &str) -> Result<Option<bytes::Bytes>, String> {
        self.0.uploaded_file(id).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::clients::embedded::EmbeddedStore;
    use crate::event::Event;
    use crate::rules::load;
    use crate::store::{JobState, NewJob, RunFilter, SqliteStore};

    /// A context over an in-memory store, with the rules of a folder holding `files`.
    fn context(files: &[(&str, &str)]) -> (Context, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let report = load::load_dir(dir.path(), &|_| None).unwrap();
        let rules = RuleSet::from_report(report);
        let context = Context {
            store: Arc::new(SqliteStore::in_memory().unwrap()),
            rules: Arc::new(RwLock::new(Arc::new(rules))),
            backend: Arc::new(EmbeddedStore::in_memory().unwrap().company("default")),
            wake: Arc::default(),
            stopping: Arc::default(),
            cancel: Arc::default(),
            metrics: Arc::default(),
        };
        (context, dir)
    }

    /// Stores an event with a job of `rule`, claims it and runs it; returns its id.
    fn run_job_of(ctx: &Context, rule: &str) -> i64 {
        let event = Event::manual(&serde_json::Map::new());
        let job = NewJob {
            rule: rule.into(),
            max_attempts: 3,
        };
        ctx.store.insert_event(&event, &[], &[job]).unwrap();
        let job = ctx.store.claim(Duration::from_secs(60)).unwrap().unwrap();
        let id = job.id;
        execute(ctx, job);
        id
    }

    fn all_runs(ctx: &Context) -> Vec<crate::store::StoredRun> {
        let filter = RunFilter {
            limit: 10,
            ..RunFilter::default()
        };
        ctx.store.runs(&filter).unwrap()
    }

    const OTHER: &str = "name: other\non:\n  webhook: {}\nscript: \"let x = 1;\"\n";

    #[test]
    fn a_job_whose_rule_file_fails_to_load_waits_instead_of_failing() {
        let (ctx, _dir) = context(&[("lead.yaml", "name: lead\non: [\n"), ("other.yaml", OTHER)]);
        let job = run_job_of(&ctx, "lead");
        assert_eq!(ctx.store.job_state(job).unwrap(), Some(JobState::Pending));
        // Not run, and the attempt not counted: claimed again later, it is attempt 1.
        let runs = all_runs(&ctx);
        assert!(runs.is_empty(), "{runs:?}");
        assert!(
            ctx.store.claim(Duration::from_secs(60)).unwrap().is_none(),
            "due in a minute, not now"
        );
    }

    #[test]
    fn a_job_whose_rule_is_gone_while_every_file_loads_is_a_dead_letter() {
        let (ctx, _dir) = context(&[("other.yaml", OTHER)]);
        let job = run_job_of(&ctx, "lead");
        assert_eq!(ctx.store.job_state(job).unwrap(), Some(JobState::Dead));
        let runs = all_runs(&ctx);
        let message = runs[0].record["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains("no longer loaded"), "{message}");
    }
}
