//! The SQLite engine of the store: one file under the data directory, written through
//! one connection, every commit synced before a webhook is answered.

use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    EventSummary, Inserted, Job, JobNext, JobState, JobSummary, JournalEntry, NewEvent, NewTick,
    Pruned, Result, RunFilter, ScheduleState, Store, StoreError, StoredRun, TickOutcome, schedule,
    writer::{Grouping, Writer},
};
use crate::event::Event;
use crate::write_turn::Turn;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    path TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    data TEXT NOT NULL,
    raw BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS event_files (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES events(id),
    bytes BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES events(id),
    rule TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    run_at INTEGER NOT NULL,
    lease_until INTEGER,
    updated_at INTEGER NOT NULL,
    replay_of INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, run_at);
CREATE INDEX IF NOT EXISTS jobs_event ON jobs (event_id);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    job_id INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_rule ON runs (rule, started_at);
CREATE INDEX IF NOT EXISTS runs_started ON runs (started_at);
CREATE INDEX IF NOT EXISTS runs_event ON runs (event_id);
CREATE TABLE IF NOT EXISTS dedupe (
    rule TEXT NOT NULL,
    key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    seen_at INTEGER NOT NULL,
    PRIMARY KEY (rule, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS journal (
    job_id INTEGER NOT NULL,
    sequence INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    result TEXT NOT NULL,
    PRIMARY KEY (job_id, sequence)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS schedule_ticks (
    rule TEXT NOT NULL,
    scheduled_for INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    event_id TEXT,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (rule, scheduled_for)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS schedule_state (
    rule TEXT PRIMARY KEY,
    handled_through INTEGER NOT NULL,
    fired INTEGER NOT NULL DEFAULT 0,
    skipped_overlap INTEGER NOT NULL DEFAULT 0,
    skipped_missed INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS store_health (
    id INTEGER PRIMARY KEY,
    checked_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS run_clients (
    run_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    PRIMARY KEY (client_id, run_id)
) WITHOUT ROWID;
";

/// A tick's job waits while another job of its rule runs: the condition, over the
/// candidate row `j`.
macro_rules! serial_busy {
    () => {
        "(serial = 1 AND EXISTS (
            SELECT 1 FROM jobs r
            WHERE r.serial = 1 AND r.rule = j.rule AND r.state = 'running'
              AND r.lease_until >= ?1 AND r.id <> j.id))"
    };
}

/// Claims the next job: the oldest due pending one, or one whose worker's lease ran out
/// with attempts left. Two walks of the (state, run_at) index, each stopping at its
/// first job: a single condition with OR makes SQLite sort every due job at each claim,
/// so a backlog would make each claim slower than the last.
const CLAIM: &str = concat!(
    "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_until = ?2,
            updated_at = ?1
     WHERE id = (
         SELECT id FROM (
             SELECT * FROM (
                 SELECT id, run_at FROM jobs j
                 WHERE state = 'pending' AND run_at <= ?1 AND NOT ",
    serial_busy!(),
    "
                 ORDER BY run_at, id LIMIT 1)
             UNION ALL
             SELECT * FROM (
                 SELECT id, run_at FROM jobs j
                 WHERE state = 'running' AND lease_until < ?1
                   AND attempts < max_attempts AND NOT ",
    serial_busy!(),
    "
                 ORDER BY run_at, id LIMIT 1))
         ORDER BY run_at, id LIMIT 1)
     RETURNING id, event_id, rule, attempts, max_attempts, replay_of"
);

/// Whether a job is due, or has a lease that ran out with attempts left: what [`CLAIM`]
/// would take, without the rule of one running tick job at a time.
const ANY_DUE: &str = "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'pending' AND run_at <= ?1)
    OR EXISTS (SELECT 1 FROM jobs WHERE state = 'running' AND lease_until < ?1
               AND attempts < max_attempts)";

/// How often expired last attempts are swept into dead letters.
const SWEEP_EVERY_MS: i64 = 5_000;

/// Connections that read a store file beside the writer.
const READERS: usize = 3;

/// The SQLite store: writes go through one writer thread that commits them in groups;
/// reads use connections of their own, which WAL lets run beside a commit.
pub struct SqliteStore {
    writer: Writer,
    /// Empty for a store in memory, whose one connection is the writer's.
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// When expired last attempts were last swept into dead letters (ms since 1970).
    last_sweep: AtomicI64,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

pub(super) fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(super) fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Whether SQLite refused because another connection holds the lock.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Makes the tables of a store, or brings an older file's up to date.
fn setup(conn: &Connection, file: bool) -> Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    if file {
        // WAL lets readers (the CLI) work beside the service; FULL syncs every
        // commit, so a 2xx survives a crash or a power cut.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
    }
    conn.execute_batch(SCHEMA)?;
    // Files made before jobs could be replayed lack that column.
    let has_replay: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('jobs') WHERE name = 'replay_of'")?
        .exists([])?;
    if !has_replay {
        conn.execute_batch("ALTER TABLE jobs ADD COLUMN replay_of INTEGER")?;
    }
    // Journal entries are intended before they are done; older files hold done ones.
    let has_done: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('journal') WHERE name = 'done'")?
        .exists([])?;
    if !has_done {
        conn.execute_batch("ALTER TABLE journal ADD COLUMN done INTEGER NOT NULL DEFAULT 1")?;
    }
    // Jobs of schedule ticks run one at a time per rule; older files lack the mark.
    let has_serial: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('jobs') WHERE name = 'serial'")?
        .exists([])?;
    if !has_serial {
        conn.execute_batch("ALTER TABLE jobs ADD COLUMN serial INTEGER NOT NULL DEFAULT 0")?;
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS jobs_serial ON jobs (rule, state) WHERE serial = 1;
         CREATE INDEX IF NOT EXISTS jobs_replay ON jobs (replay_of) WHERE replay_of IS NOT NULL;
         CREATE INDEX IF NOT EXISTS events_received ON events (received_at);
         CREATE INDEX IF NOT EXISTS event_files_event ON event_files (event_id);
         CREATE INDEX IF NOT EXISTS dedupe_seen ON dedupe (seen_at);",
    )?;
    Ok(())
}

impl SqliteStore {
    /// Opens (or creates) the store file; writes waiting at the same moment share a
    /// commit.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        Self::open_with(path, Grouping::Shared)
    }

    /// Opens (or creates) the store file, grouping writes into commits as told.
    pub fn open_with(path: &Path, grouping: Grouping) -> Result<SqliteStore> {
        let open = || {
            Connection::open(path).map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                message: e.to_string(),
            })
        };
        let conn = open()?;
        // Opening a file another opener is setting up at the same moment (switching it
        // to WAL, making its tables) can be refused as busy at once, whatever the busy
        // timeout: try again for a while.
        let mut tries = 0;
        loop {
            match setup(&conn, true) {
                Err(StoreError::Sqlite(e)) if is_busy(&e) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                other => break other?,
            }
        }
        let turn = Some(Turn::for_file(path));
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = open()?;
            reader.busy_timeout(Duration::from_secs(5))?;
            reader.pragma_update(None, "query_only", true)?;
            readers.push(Mutex::new(reader));
        }
        Self::start(conn, readers, grouping, turn)
    }

    /// A store that lives in memory, for tests and dry runs.
    pub fn in_memory() -> Result<SqliteStore> {
        let conn = Connection::open_in_memory()?;
        setup(&conn, false)?;
        Self::start(conn, Vec::new(), Grouping::Shared, None)
    }

    fn start(
        conn: Connection,
        readers: Vec<Mutex<Connection>>,
        grouping: Grouping,
        turn: Option<Turn>,
    ) -> Result<SqliteStore> {
        Ok(SqliteStore {
            writer: Writer::start(Arc::new(Mutex::new(conn)), grouping, turn)?,
            readers,
            next_reader: AtomicUsize::new(0),
            last_sweep: AtomicI64::new(0),
        })
    }

    /// Writes made and commits that held them, since the store was opened.
    pub fn writes_and_commits(&self) -> (u64, u64) {
        self.writer.counts()
    }

    /// A connection to read with: a free reader if there is one.
    fn read(&self) -> MutexGuard<'_, Connection> {
        let n = self.readers.len();
        if n == 0 {
            return self.writer.lock();
        }
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            match self.readers[(start + i) % n].try_lock() {
                Ok(conn) => return conn,
                Err(TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        // No code panics while holding the lock; recover the connection if one did.
        self.readers[start % n]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in a transaction of its own on the writing connection, outside the group
    /// commits: for the rare writes that borrow what the writer thread cannot take.
    fn write_now<T>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>) -> Result<T> {
        let (_turn, mut conn) = self.writer.lock_to_write();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// The bytes of a stored file part.
    pub fn file(&self, id: &str) -> Result<Option<Bytes>> {
        let conn = self.read();
        let bytes: Option<Vec<u8>> = conn
            .query_row("SELECT bytes FROM event_files WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(bytes.map(Bytes::from))
    }
}

impl Store for SqliteStore {
    fn uploaded_file(&self, id: &str) -> Result<Option<Bytes>> {
        self.file(id)
    }

    fn insert_batch(&self, batch: Vec<NewEvent>) -> Result<Vec<Inserted>> {
        self.writer.write(move |conn| insert_events(conn, &batch))
    }

    fn event(&self, id: &str) -> Result<Option<Event>> {
        let conn = self.read();
        let row: Option<(String, Vec<u8>)> = conn
            .query_row("SELECT data, raw FROM events WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        match row {
            None => Ok(None),
            Some((data, raw)) => {
                let mut event: Event = serde_json::from_str(&data)
                    .map_err(|e| StoreError::Corrupt(format!("event {id}: {e}")))?;
                event.raw = Bytes::from(raw);
                Ok(Some(event))
            }
        }
    }

    fn events(&self, rule: Option<&str>, limit: usize) -> Result<Vec<EventSummary>> {
        let conn = self.read();
        let limit = limit.clamp(1, 10_000) as i64;
        let mut stmt = conn.prepare(
            "SELECT id, source, path, received_at FROM events e
             WHERE ?1 IS NULL OR EXISTS (SELECT 1 FROM jobs j WHERE j.event_id = e.id AND j.rule = ?1)
             ORDER BY received_at DESC, id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![rule, limit], |r| {
            Ok(EventSummary {
                id: r.get(0)?,
                source: r.get(1)?,
                path: r.get(2)?,
                received_at: from_millis(r.get(3)?),
                jobs: Vec::new(),
            })
        })?;
        let mut events = rows.collect::<std::result::Result<Vec<_>, _>>()?;
        let mut jobs = conn.prepare(
            "SELECT id, rule, state, attempts FROM jobs WHERE event_id = ?1 ORDER BY id",
        )?;
        for event in &mut events {
            let rows = jobs.query_map([&event.id], |r| {
                let state: String = r.get(2)?;
                Ok(JobSummary {
                    id: r.get(0)?,
                    rule: r.get(1)?,
                    state: JobState::parse(&state).unwrap_or(JobState::Pending),
                    attempts: r.get(3)?,
                })
            })?;
            event.jobs = rows.collect::<std::result::Result<Vec<_>, _>>()?;
        }
        Ok(events)
    }

    fn claim(&self, lease: Duration) -> Result<Option<Job>> {
        let now = millis(Utc::now());
        let until = now.saturating_add(lease.as_millis().min(i64::MAX as u128) as i64);
        // A job whose lease ran out on its last attempt (its worker died with it) is a
        // dead letter, not a job to run once more: the claim never takes one, and every
        // few seconds (not at every claim) they are marked dead.
        let last = self.last_sweep.load(Ordering::Relaxed);
        let sweep = now.saturating_sub(last) >= SWEEP_EVERY_MS;
        if sweep {
            self.last_sweep.store(now, Ordering::Relaxed);
        }
        // An idle service's workers look for jobs twice a second each: a read tells
        // whether there is one to claim, and takes no turn at writing when there is not.
        if !sweep {
            let due: bool = self
                .read()
                .prepare_cached(ANY_DUE)?
                .query_row([now], |r| r.get(0))?;
            if !due {
                return Ok(None);
            }
        }
        self.writer.write(move |conn| {
            if sweep {
                conn.execute(
                    "UPDATE jobs SET state = 'dead', lease_until = NULL, updated_at = ?1
                     WHERE state = 'running' AND lease_until < ?1 AND attempts >= max_attempts",
                    [now],
                )?;
            }
            let job = conn
                .prepare_cached(CLAIM)?
                .query_row(params![now, until], |r| {
                    Ok(Job {
                        id: r.get(0)?,
                        event_id: r.get(1)?,
                        rule: r.get(2)?,
                        attempt: r.get(3)?,
                        max_attempts: r.get(4)?,
                        replay_of: r.get(5)?,
                    })
                })
                .optional()?;
            Ok(job)
        })
    }

    fn finish(&self, job: &Job, run: &StoredRun, next: JobNext) -> Result<()> {
        let record =
            serde_json::to_string(&run.record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // The clients the run changed, for the listing of a client's runs.
        let clients: Vec<String> = run
            .record
            .get("changes")
            .and_then(|c| c.as_array())
            .into_iter()
            .flatten()
            .filter_map(|change| change.get("client_id")?.as_str().map(str::to_owned))
            .collect();
        let columns = (
            run.id.clone(),
            run.job_id,
            run.event_id.clone(),
            run.rule.clone(),
            run.status.clone(),
            millis(run.started_at),
        );
        let job_id = job.id;
        let now = millis(Utc::now());
        self.writer.write(move |conn| {
            let (id, run_job, event_id, rule, status, started_at) = columns;
            conn.prepare_cached(
                "INSERT INTO runs (id, job_id, event_id, rule, status, started_at, record)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![id, run_job, event_id, rule, status, started_at, record])?;
            for client in &clients {
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO run_clients (run_id, client_id) VALUES (?1, ?2)",
                )?
                .execute(params![id, client])?;
            }
            match next {
                JobNext::Done => conn.execute(
                    "UPDATE jobs SET state = 'done', lease_until = NULL, updated_at = ?2 WHERE id = ?1",
                    params![job_id, now],
                )?,
                JobNext::Dead => conn.execute(
                    "UPDATE jobs SET state = 'dead', lease_until = NULL, updated_at = ?2 WHERE id = ?1",
                    params![job_id, now],
                )?,
                JobNext::Retry(at) => conn.execute(
                    "UPDATE jobs SET state = 'pending', lease_until = NULL, run_at = ?2, updated_at = ?3
                     WHERE id = ?1",
                    params![job_id, millis(at), now],
                )?,
                JobNext::Requeue => conn.execute(
                    "UPDATE jobs SET state = 'pending', lease_until = NULL, run_at = ?2,
                            updated_at = ?2, attempts = MAX(attempts - 1, 0)
                     WHERE id = ?1",
                    params![job_id, now],
                )?,
            };
            Ok(())
        })
    }

    fn postpone(&self, job_id: i64, until: DateTime<Utc>) -> Result<()> {
        let (now, until) = (millis(Utc::now()), millis(until));
        self.writer.write(move |conn| {
            conn.execute(
                "UPDATE jobs SET state = 'pending', lease_until = NULL, run_at = ?2,
                        updated_at = ?3, attempts = MAX(attempts - 1, 0)
                 WHERE id = ?1 AND state = 'running'",
                params![job_id, until, now],
            )?;
            Ok(())
        })
    }

    fn requeue_running(&self) -> Result<u64> {
        let now = millis(Utc::now());
        self.write_now(|tx| {
            // A job that was on its last attempt when the process died does not get
            // another: a job that kills the process each time it runs must not do so
            // forever.
            tx.execute(
                "UPDATE jobs SET state = 'dead', lease_until = NULL, updated_at = ?1
                 WHERE state = 'running' AND attempts >= max_attempts",
                [now],
            )?;
            let n = tx.execute(
                "UPDATE jobs SET state = 'pending', lease_until = NULL, run_at = ?1, updated_at = ?1
                 WHERE state = 'running'",
                [now],
            )?;
            Ok(n as u64)
        })
    }

    fn renew_lease(&self, job_id: i64, lease: Duration) -> Result<()> {
        let now = millis(Utc::now());
        let until = now.saturating_add(lease.as_millis().min(i64::MAX as u128) as i64);
        self.writer.write(move |conn| {
            conn.execute(
                "UPDATE jobs SET lease_until = ?1 WHERE id = ?2 AND state = 'running'",
                params![until, job_id],
            )?;
            Ok(())
        })
    }

    fn runs(&self, filter: &RunFilter) -> Result<Vec<StoredRun>> {
        let conn = self.read();
        let limit = filter.limit.clamp(1, 10_000) as i64;
        let mut stmt = conn.prepare(
            "SELECT id, job_id, event_id, rule, status, started_at, record FROM runs r
             WHERE (?1 IS NULL OR rule = ?1) AND (?2 IS NULL OR status = ?2)
               AND (?3 IS NULL OR event_id = ?3)
               AND (?4 IS NULL OR EXISTS (SELECT 1 FROM run_clients c
                                          WHERE c.client_id = ?4 AND c.run_id = r.id))
             ORDER BY started_at DESC, id DESC LIMIT ?5",
        )?;
        let rows = stmt.query_map(
            params![
                filter.rule,
                filter.status,
                filter.event_id,
                filter.client_id,
                limit
            ],
            stored_run,
        )?;
        Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
    }

    fn run(&self, id: &str) -> Result<Option<StoredRun>> {
        let conn = self.read();
        Ok(conn
            .query_row(
                "SELECT id, job_id, event_id, rule, status, started_at, record FROM runs WHERE id = ?1",
                [id],
                stored_run,
            )
            .optional()?)
    }

    fn pending_jobs(&self) -> Result<u64> {
        let conn = self.read();
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM jobs WHERE state IN ('pending', 'running')",
            [],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }

    fn ping(&self) -> Result<()> {
        self.read()
            .query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?;
        // After a failed commit (a full disk, say) the store is ready again only once a
        // commit goes through: this one, or any other.
        if self.writer.failure().is_some() {
            let now = millis(Utc::now());
            self.writer.write(move |conn| {
                conn.execute(
                    "INSERT OR REPLACE INTO store_health (id, checked_at) VALUES (1, ?1)",
                    [now],
                )?;
                Ok(())
            })?;
        }
        Ok(())
    }

    fn journal(&self, job_id: i64) -> Result<Vec<JournalEntry>> {
        let conn = self.read();
        let mut stmt = conn.prepare(
            "SELECT sequence, fingerprint, result, done FROM journal WHERE job_id = ?1
             ORDER BY sequence",
        )?;
        let rows = stmt.query_map([job_id], |r| {
            let result: String = r.get(2)?;
            let done: bool = r.get(3)?;
            Ok(JournalEntry {
                sequence: r.get(0)?,
                fingerprint: r.get(1)?,
                result: done
                    .then(|| serde_json::from_str(&result).unwrap_or(serde_json::Value::Null)),
            })
        })?;
        Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
    }

    fn record_write(&self, job_id: i64, entry: &JournalEntry) -> Result<()> {
        let result =
            serde_json::to_string(&entry.result).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (sequence, fingerprint) = (entry.sequence, entry.fingerprint.clone());
        let done = entry.result.is_some();
        let write = move |conn: &Connection| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO journal (job_id, sequence, fingerprint, result, done)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![job_id, sequence, fingerprint, result, done])?;
            Ok(())
        };
        // An intent must be on disk before its write is sent. A result need not: lost
        // in a crash, it leaves the intent, which the retry settles; it is committed
        // with the next write that is waited for (the job's next intent, or its end).
        if done {
            self.writer.write_behind(write);
            Ok(())
        } else {
            self.writer.write(write)
        }
    }

    fn forget_write(&self, job_id: i64, sequence: u32) -> Result<()> {
        // Lost in a crash, the intent is settled by the retry.
        self.writer.write_behind(move |conn| {
            conn.prepare_cached("DELETE FROM journal WHERE job_id = ?1 AND sequence = ?2")?
                .execute(params![job_id, sequence])?;
            Ok(())
        });
        Ok(())
    }

    fn replay_event(
        &self,
        event_id: &str,
        rule: Option<&str>,
        attempts: &dyn Fn(&str) -> u32,
    ) -> Result<Vec<i64>> {
        let now = millis(Utc::now());
        self.write_now(|tx| {
            // The newest job of each rule on this event is the one the replay follows.
            // Only a rule that took the event may run it again: another rule's checks
            // (its signature, its allowed senders) never passed on it.
            let previous: Vec<(i64, String)> = {
                let mut stmt = tx.prepare(
                    "SELECT MAX(id), rule FROM jobs WHERE event_id = ?1 AND (?2 IS NULL OR rule = ?2)
                     GROUP BY rule ORDER BY rule",
                )?;
                let rows =
                    stmt.query_map(params![event_id, rule], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<std::result::Result<Vec<_>, _>>()?
            };
            let mut ids = Vec::new();
            for (replay_of, rule) in previous {
                tx.execute(
                    "INSERT INTO jobs (event_id, rule, state, max_attempts, run_at, updated_at, replay_of)
                     VALUES (?1, ?2, 'pending', ?3, ?4, ?4, ?5)",
                    params![event_id, rule, attempts(&rule).max(1), now, replay_of],
                )?;
                ids.push(tx.last_insert_rowid());
            }
            Ok(ids)
        })
    }

    fn replay_dead(&self, rule: &str, limit: usize, attempts: u32) -> Result<Vec<i64>> {
        let now = millis(Utc::now());
        let limit = limit.clamp(1, 100_000) as i64;
        self.write_now(|tx| {
            let mut stmt = tx.prepare(
                "INSERT INTO jobs (event_id, rule, state, max_attempts, run_at, updated_at, replay_of)
                 SELECT event_id, rule, 'pending', ?3, ?4, ?4, id FROM jobs j
                 WHERE rule = ?1 AND state = 'dead'
                   AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.replay_of = j.id)
                 ORDER BY id LIMIT ?2
                 RETURNING id",
            )?;
            let rows = stmt.query_map(params![rule, limit, attempts.max(1), now], |r| r.get(0))?;
            Ok(rows.collect::<std::result::Result<Vec<i64>, _>>()?)
        })
    }

    fn schedule_start(&self, rule: &str, now: DateTime<Utc>) -> Result<ScheduleState> {
        self.write_now(|tx| {
            tx.execute(
                "INSERT OR IGNORE INTO schedule_state (rule, handled_through) VALUES (?1, ?2)",
                params![rule, millis(now)],
            )?;
            Ok(tx.query_row(
                &format!(
                    "SELECT {} FROM schedule_state s WHERE s.rule = ?1",
                    schedule::STATE_COLUMNS
                ),
                [rule],
                schedule::state,
            )?)
        })
    }

    fn record_tick(
        &self,
        tick: &NewTick,
        missed_between: &dyn Fn(DateTime<Utc>, DateTime<Utc>) -> u64,
    ) -> Result<TickOutcome> {
        // IMMEDIATE: the write lock first, so that two processes cannot both read the
        // rule's state before either writes. A tick already handled wrote nothing.
        self.write_now(|tx| schedule::record(tx, tick, missed_between))
    }

    fn schedule_states(&self) -> Result<Vec<ScheduleState>> {
        let conn = self.read();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM schedule_state s ORDER BY s.rule",
            schedule::STATE_COLUMNS
        ))?;
        let rows = stmt.query_map([], schedule::state)?;
        Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
    }

    fn prune(
        &self,
        before: DateTime<Utc>,
        dedupe_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Pruned> {
        let (before, dedupe_before) = (millis(before), millis(dedupe_before));
        let limit = limit.clamp(1, 10_000) as i64;
        self.writer.write(move |conn| {
            let events: Vec<String> = conn
                .prepare_cached(
                    "SELECT id FROM events e WHERE received_at < ?1
                       AND NOT EXISTS (
                           SELECT 1 FROM jobs j WHERE j.event_id = e.id
                             AND (j.state IN ('pending', 'running')
                                  OR (j.state = 'dead' AND NOT EXISTS (
                                      SELECT 1 FROM jobs r WHERE r.replay_of = j.id))))
                     ORDER BY received_at LIMIT ?2",
                )?
                .query_map(params![before, limit], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for id in &events {
                for sql in [
                    "DELETE FROM run_clients WHERE run_id IN (SELECT id FROM runs WHERE event_id = ?1)",
                    "DELETE FROM runs WHERE event_id = ?1",
                    "DELETE FROM journal WHERE job_id IN (SELECT id FROM jobs WHERE event_id = ?1)",
                    "DELETE FROM jobs WHERE event_id = ?1",
                    "DELETE FROM event_files WHERE event_id = ?1",
                    "DELETE FROM events WHERE id = ?1",
                ] {
                    conn.prepare_cached(sql)?.execute([id])?;
                }
            }
            let dedupe_keys = conn
                .prepare_cached(
                    "DELETE FROM dedupe WHERE (rule, key) IN (
                         SELECT rule, key FROM dedupe WHERE seen_at < ?1 LIMIT ?2)",
                )?
                .execute(params![dedupe_before, limit])?;
            Ok(Pruned {
                events: events.len() as u64,
                dedupe_keys: dedupe_keys as u64,
            })
        })
    }

    fn job_state(&self, job_id: i64) -> Result<Option<JobState>> {
        let conn = self.read();
        let state: Option<String> = conn
            .query_row("SELECT state FROM jobs WHERE id = ?1", [job_id], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(state.and_then(|s| JobState::parse(&s)))
    }
}

/// Stores events with their files and jobs, each unless its dedupe key was seen.
fn insert_events(conn: &Connection, batch: &[NewEvent]) -> Result<Vec<Inserted>> {
    let now = millis(Utc::now());
    let mut outcomes = Vec::with_capacity(batch.len());
    for item in batch {
        if let Some(key) = &item.dedupe {
            let window = key.window.as_millis().min(i64::MAX as u128) as i64;
            let seen: Option<String> = conn
                .prepare_cached(
                    "SELECT event_id FROM dedupe WHERE rule = ?1 AND key = ?2 AND seen_at > ?3",
                )?
                .query_row(
                    params![key.rule, key.key, now.saturating_sub(window)],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(first) = seen {
                outcomes.push(Inserted::Duplicate(first));
                continue;
            }
            conn.prepare_cached(
                "INSERT OR REPLACE INTO dedupe (rule, key, event_id, seen_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![key.rule, key.key, item.event.id, now])?;
        }
        insert_one(conn, item, now)?;
        outcomes.push(Inserted::Stored);
    }
    Ok(outcomes)
}

pub(super) fn insert_one(tx: &Connection, item: &NewEvent, now: i64) -> Result<()> {
    let event = &item.event;
    let data = serde_json::to_string(event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tx.prepare_cached(
        "INSERT INTO events (id, source, path, received_at, data, raw) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
            event.id,
            event.source.as_str(),
            event.path,
            millis(event.received_at),
            data,
            event.raw.as_ref()
        ])?;
    for file in &item.files {
        tx.prepare_cached("INSERT INTO event_files (id, event_id, bytes) VALUES (?1, ?2, ?3)")?
            .execute(params![file.id, event.id, file.bytes.as_ref()])?;
    }
    for job in &item.jobs {
        tx.prepare_cached(
            "INSERT INTO jobs (event_id, rule, state, max_attempts, run_at, updated_at)
             VALUES (?1, ?2, 'pending', ?3, ?4, ?4)",
        )?
        .execute(params![event.id, job.rule, job.max_attempts, now])?;
    }
    Ok(())
}

fn stored_run(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRun> {
    let record: String = r.get(6)?;
    Ok(StoredRun {
        id: r.get(0)?,
        job_id: r.get(1)?,
        event_id: r.get(2)?,
        rule: r.get(3)?,
        status: r.get(4)?,
        started_at: from_millis(r.get(5)?),
        record: serde_json::from_str(&record).unwrap_or(serde_json::Value::Null),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{JobNext, JobState, NewEvent, NewJob, Store, StoredRun};

    fn store_with_job(max_attempts: u32) -> SqliteStore {
        let store = SqliteStore::in_memory().unwrap();
        let event = Event::manual(&serde_json::Map::new());
        let job = NewJob {
            rule: "r".into(),
            max_attempts,
        };
        store.insert_event(&event, &[], &[job]).unwrap();
        store
    }

    /// The steps SQLite takes for one claim with `pending` jobs waiting.
    fn claim_steps(pending: usize) -> i32 {
        let store = SqliteStore::in_memory().unwrap();
        let job = NewJob {
            rule: "r".into(),
            max_attempts: 3,
        };
        let batch: Vec<NewEvent> = (0..pending)
            .map(|_| NewEvent {
                event: Event::manual(&serde_json::Map::new()),
                files: Vec::new(),
                jobs: vec![job.clone()],
                dedupe: None,
            })
            .collect();
        store.insert_batch(batch).unwrap();
        let conn = store.writer.lock();
        let mut stmt = conn.prepare(CLAIM).unwrap();
        let now = millis(Utc::now()) + 1;
        let claimed: i64 = stmt
            .query_row(params![now, now + 60_000], |r| r.get(0))
            .unwrap();
        assert!(claimed > 0);
        assert_eq!(
            stmt.get_status(rusqlite::StatementStatus::Sort),
            1,
            "sorts only the two candidates"
        );
        stmt.get_status(rusqlite::StatementStatus::VmStep)
    }

    #[test]
    fn a_claim_costs_the_same_however_long_the_backlog() {
        let few = claim_steps(10);
        let many = claim_steps(5_000);
        // The old single OR condition sorted every due job: thousands of steps here.
        assert!(
            many <= few + 20,
            "a claim took {few} steps with 10 jobs waiting and {many} with 5,000"
        );
    }

    /// A store file with `n` dead letters of rule `r`.
    fn dead_letters(path: &Path, n: usize) -> SqliteStore {
        let store = SqliteStore::open(path).unwrap();
        let batch: Vec<NewEvent> = (0..n)
            .map(|_| NewEvent {
                event: Event::manual(&serde_json::Map::new()),
                files: Vec::new(),
                jobs: vec![NewJob {
                    rule: "r".into(),
                    max_attempts: 1,
                }],
                dedupe: None,
            })
            .collect();
        store.insert_batch(batch).unwrap();
        while let Some(job) = store.claim(Duration::from_secs(60)).unwrap() {
            let run = StoredRun::of(
                &job,
                format!("run-{}", job.id),
                "failed",
                Utc::now(),
                serde_json::json!({}),
            );
            store.finish(&job, &run, JobNext::Dead).unwrap();
        }
        store
    }

    #[test]
    fn dead_letters_replayed_at_once_from_two_processes_are_queued_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        drop(dead_letters(&path, 200));
        let replays: Vec<Vec<i64>> = std::thread::scope(|scope| {
            let callers: Vec<_> = (0..3)
                .map(|_| {
                    let path = path.clone();
                    scope.spawn(move || {
                        let store = SqliteStore::open(&path).unwrap();
                        store.replay_dead("r", 1000, 2).unwrap()
                    })
                })
                .collect();
            callers.into_iter().map(|c| c.join().unwrap()).collect()
        });
        assert_eq!(
            replays.iter().map(Vec::len).sum::<usize>(),
            200,
            "{replays:?}"
        );
        // Nothing is left to replay.
        let store = SqliteStore::open(&path).unwrap();
        assert!(store.replay_dead("r", 1000, 2).unwrap().is_empty());
    }

    #[test]
    fn a_replay_has_the_rules_attempts_and_a_stop_on_the_last_one_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = dead_letters(&dir.path().join("store.db"), 1);
        let replayed = store.replay_dead("r", 10, 1).unwrap();
        assert_eq!(replayed.len(), 1);
        let job = store.claim(Duration::from_secs(60)).unwrap().unwrap();
        assert_eq!((job.id, job.attempt, job.max_attempts), (replayed[0], 1, 1));
        // The service stops (or dies) while the replay runs its last attempt: it is a
        // dead letter again, not a job that runs at every start.
        store.requeue_running().unwrap();
        assert_eq!(store.job_state(job.id).unwrap(), Some(JobState::Dead));
        // An event replayed for every rule that took it gets each rule's attempts.
        let again = store.replay_event(&job.event_id, None, &|_| 3).unwrap();
        let job = store.claim(Duration::from_secs(60)).unwrap().unwrap();
        assert_eq!((job.id, job.max_attempts), (again[0], 3));
    }

    #[test]
    fn a_renewed_lease_keeps_a_running_job_from_being_claimed_again() {
        let store = store_with_job(3);
        let job = store.claim(Duration::ZERO).unwrap().unwrap();
        // The lease ran out at once: another worker could take the job...
        std::thread::sleep(Duration::from_millis(5));
        store.renew_lease(job.id, Duration::from_secs(60)).unwrap();
        // ...but its worker renewed it, so nobody does.
        assert!(store.claim(Duration::from_secs(60)).unwrap().is_none());
    }

    #[test]
    fn an_expired_last_attempt_is_a_dead_letter_not_a_new_attempt() {
        let store = store_with_job(1);
        let job = store.claim(Duration::ZERO).unwrap().unwrap();
        assert_eq!(job.attempt, 1);
        std::thread::sleep(Duration::from_millis(5));
        assert!(store.claim(Duration::from_secs(60)).unwrap().is_none());
        // Marked dead by the next sweep.
        store
            .last_sweep
            .store(0, std::sync::atomic::Ordering::Relaxed);
        assert!(store.claim(Duration::from_secs(60)).unwrap().is_none());
        assert_eq!(
            store.job_state(job.id).unwrap(),
            Some(crate::store::JobState::Dead)
        );
        // A job with attempts left is claimed again after its lease runs out.
        let store = store_with_job(2);
        let job = store.claim(Duration::ZERO).unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let again = store.claim(Duration::from_secs(60)).unwrap().unwrap();
        assert_eq!((again.id, again.attempt), (job.id, 2));
    }
}
