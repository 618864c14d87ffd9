//! The SQLite writer: one thread that runs the writes of every caller (deliveries being
//! stored, workers claiming and finishing jobs, journal entries) and commits those that
//! wait at the same moment together, so that one synced commit serves many of them.
//! Each write runs in a savepoint of its own: one that fails is undone alone, and its
//! caller gets its error. Every caller is answered only after the commit that holds its
//! write is synced.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tracing::error;

use super::{Result, StoreError};
use crate::write_turn::Turn;

/// The most writes one commit holds.
const MAX_GROUP: usize = 1024;

/// Writes waiting for the writer; past this, callers wait to enqueue.
const QUEUE: usize = 4096;

/// Answers a write's caller once the commit is known: `Ok` when it is synced.
type Reply = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;

/// One write: runs in its savepoint (or, given why it cannot run, fails) and says
/// whether it succeeded, with how to answer its caller.
type Op =
    Box<dyn for<'a> FnOnce(std::result::Result<&'a Connection, &'a str>) -> (bool, Reply) + Send>;

/// How writes are grouped into commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// Writes waiting at the same moment share a commit.
    Shared,
    /// Each write is committed alone.
    Alone,
}

/// A handle to the writer thread; the thread ends when the last handle is dropped.
pub struct Writer {
    queue: SyncSender<Op>,
    conn: Arc<Mutex<Connection>>,
    counts: Arc<Counts>,
    /// The file's write turn, taken before the connection; none in memory.
    turn: Option<Turn>,
}

/// What the writer has done.
#[derive(Debug, Default)]
struct Counts {
    /// Writes handed to the writer.
    submitted: AtomicU64,
    /// Commits made.
    commits: AtomicU64,
    /// Why the last commit failed, until one succeeds.
    failure: Mutex<Option<String>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the writer thread over the connection that writes, which takes the
    /// file's write `turn` (if any) for each commit.
    pub fn start(
        conn: Arc<Mutex<Connection>>,
        grouping: Grouping,
        turn: Option<Turn>,
    ) -> Result<Writer> {
        let (queue, inbox) = mpsc::sync_channel(QUEUE);
        let thread_conn = conn.clone();
        let counts = Arc::new(Counts::default());
        let thread_counts = counts.clone();
        let thread_turn = turn.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                run(
                    &thread_conn,
                    &inbox,
                    grouping,
                    &thread_counts,
                    thread_turn.as_ref(),
                )
            })
            .map_err(|e| StoreError::Stopped(format!("cannot start the store writer: {e}")))?;
        Ok(Writer {
            queue,
            conn,
            counts,
            turn,
        })
    }

    /// Runs `write` in the next group commit and returns its result once that commit
    /// is synced.
    pub fn write<T: Send + 'static>(
        &self,
        write: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (answer, answered) = mpsc::sync_channel::<Result<T>>(1);
        let stopped = || StoreError::Stopped("the store writer has stopped".into());
        self.queue.send(op(write, answer)).map_err(|_| stopped())?;
        self.counts.submitted.fetch_add(1, Ordering::Relaxed);
        answered.recv().map_err(|_| stopped())?
    }

    /// Hands `write` to the next group commit without waiting for it: for a write whose
    /// loss in a crash is made up for otherwise. Writes are committed in the order they
    /// are handed over, so a later write that is waited for covers this one too. A
    /// failure is logged.
    pub fn write_behind(&self, write: impl FnOnce(&Connection) -> Result<()> + Send + 'static) {
        let write = move |conn: &Connection| {
            write(conn).inspect_err(|e| error!(error = %e, "a write made in the background failed"))
        };
        let (answer, _) = mpsc::sync_channel::<Result<()>>(1);
        if self.queue.send(op(write, answer)).is_ok() {
            self.counts.submitted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes submitted and commits made so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.counts.submitted.load(Ordering::Relaxed),
            self.counts.commits.load(Ordering::Relaxed),
        )
    }

    /// Why the last commit failed, when it did and none has succeeded since.
    pub fn failure(&self) -> Option<String> {
        lock_failure(&self.counts).clone()
    }

    /// The writing connection, for a transaction of its own outside the group commits
    /// (one that borrows what a write on the writer thread cannot), with the file's
    /// write turn, held as long as the connection.
    pub fn lock_to_write(&self) -> (Option<MutexGuard<'_, ()>>, MutexGuard<'_, Connection>) {
        let turn = self.turn.as_ref().map(Turn::take);
        (turn, lock(&self.conn))
    }

    /// The writing connection, for reading through it (a store in memory has no other).
    pub fn lock(&self) -> MutexGuard<'_, Connection> {
        lock(&self.conn)
    }
}

/// A write, and where its result goes once the commit that holds it is known.
fn op<T: Send + 'static>(
    write: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    answer: SyncSender<Result<T>>,
) -> Op {
    Box::new(move |conn: std::result::Result<&Connection, &str>| {
        let out = match conn {
            Ok(conn) => write(conn),
            Err(message) => Err(StoreError::Commit(message.to_owned())),
        };
        let ok = out.is_ok();
        let reply: Reply = Box::new(move |commit| {
            let out = match commit {
                Ok(()) => out,
                // The write's own error says more than the failed commit.
                Err(_) if out.is_err() => out,
                Err(message) => Err(StoreError::Commit(message)),
            };
            let _ = answer.send(out);
        });
        (ok, reply)
    })
}

fn lock_failure(counts: &Counts) -> MutexGuard<'_, Option<String>> {
    counts.failure.lock().unwrap_or_else(|p| p.into_inner())
}

fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // No code panics while holding the lock; recover the connection if one did.
    conn.lock().unwrap_or_else(|p| p.into_inner())
}

fn run(
    conn: &Mutex<Connection>,
    inbox: &Receiver<Op>,
    grouping: Grouping,
    counts: &Counts,
    turn: Option<&Turn>,
) {
    let limit = match grouping {
        Grouping::Shared => MAX_GROUP,
        Grouping::Alone => 1,
    };
    // Wait for the first write; once the connection is free, take every other one
    // waiting by then.
    while let Ok(first) = inbox.recv() {
        let _turn = turn.map(Turn::take);
        let mut conn = lock(conn);
        let mut group = vec![first];
        while group.len() < limit {
            match inbox.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        commit_group(&mut conn, group, counts);
    }
}

/// Runs a group of writes in one transaction and commits it; true when it committed.
fn commit_group(conn: &mut Connection, group: Vec<Op>, counts: &Counts) -> bool {
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            error!(error = %e, writes = group.len(), "cannot begin a store transaction");
            *lock_failure(counts) = Some(e.to_string());
            refuse(group, &e.to_string());
            return false;
        }
    };
    let mut replies = Vec::with_capacity(group.len());
    let mut broken = None;
    let mut ops = group.into_iter();
    for op in ops.by_ref() {
        let (reply, kept) = in_savepoint(&mut tx, op);
        replies.push(reply);
        if let Err(message) = kept {
            broken = Some(message);
            break;
        }
    }
    let outcome = match broken {
        // A savepoint that cannot be made or ended leaves the transaction unusable:
        // nothing is committed, and every write of the group gets the error.
        Some(message) => {
            drop(tx);
            refuse(ops.collect(), &message);
            Err(message)
        }
        None => tx.commit().map_err(|e| e.to_string()),
    };
    if let Err(message) = &outcome {
        error!(error = %message, writes = replies.len(), "cannot commit to the store");
    }
    let committed = outcome.is_ok();
    if committed {
        counts.commits.fetch_add(1, Ordering::Relaxed);
    }
    *lock_failure(counts) = outcome.as_ref().err().cloned();
    for reply in replies {
        reply(outcome.clone());
    }
    committed
}

/// Runs one write in a savepoint of its own: kept when it succeeded, undone when not.
fn in_savepoint(tx: &mut Transaction<'_>, op: Op) -> (Reply, std::result::Result<(), String>) {
    let mut savepoint = match tx.savepoint() {
        Ok(savepoint) => savepoint,
        Err(e) => {
            let message = e.to_string();
            let (_, reply) = op(Err(&message));
            return (reply, Err(message));
        }
    };
    let (ok, reply) = op(Ok(&savepoint));
    let kept = if ok {
        savepoint.commit()
    } else {
        savepoint.rollback()
    };
    (reply, kept.map_err(|e| e.to_string()))
}

/// Answers writes that cannot run with the error that stops them.
fn refuse(group: Vec<Op>, message: &str) {
    for op in group {
        let (_, reply) = op(Err(message));
        reply(Err(message.to_owned()));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn table() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY)")
            .unwrap();
        conn
    }

    fn insert(n: i64) -> impl FnOnce(&Connection) -> Result<i64> + Send + 'static {
        move |conn| {
            conn.execute("INSERT INTO t (n) VALUES (?1)", [n])?;
            Ok(n)
        }
    }

    fn rows(conn: &Connection) -> Vec<i64> {
        let mut stmt = conn.prepare("SELECT n FROM t ORDER BY n").unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn a_failed_write_is_undone_alone_and_the_others_commit() {
        let mut conn = table();
        let (a, a_answer) = mpsc::sync_channel(1);
        let (b, b_answer) = mpsc::sync_channel(1);
        let (c, c_answer) = mpsc::sync_channel(1);
        let failing = |conn: &Connection| -> Result<i64> {
            conn.execute("INSERT INTO t (n) VALUES (2)", [])?;
            Err(StoreError::Corrupt("refused after writing".into()))
        };
        let group = vec![op(insert(1), a), op(failing, b), op(insert(3), c)];
        assert!(commit_group(&mut conn, group, &Counts::default()));
        assert_eq!(a_answer.recv().unwrap().unwrap(), 1);
        let refused = b_answer.recv().unwrap().unwrap_err();
        assert!(
            refused.to_string().contains("refused after writing"),
            "{refused}"
        );
        assert_eq!(c_answer.recv().unwrap().unwrap(), 3);
        assert_eq!(rows(&conn), vec![1, 3]);
    }

    #[test]
    fn writes_that_cannot_begin_all_get_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let holder = Connection::open(&path).unwrap();
        holder
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (n INTEGER PRIMARY KEY)")
            .unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let mut conn = Connection::open(&path).unwrap();
        conn.busy_timeout(std::time::Duration::ZERO).unwrap();
        let (a, a_answer) = mpsc::sync_channel(1);
        let (b, b_answer) = mpsc::sync_channel(1);
        let counts = Counts::default();
        assert!(!commit_group(
            &mut conn,
            vec![op(insert(1), a), op(insert(2), b)],
            &counts
        ));
        assert!(lock_failure(&counts).is_some(), "the failure is kept");
        for answer in [a_answer, b_answer] {
            let e = answer.recv().unwrap().unwrap_err();
            assert!(matches!(e, StoreError::Commit(_)), "{e}");
        }
        holder.execute_batch("ROLLBACK").unwrap();
        assert!(rows(&conn).is_empty());
        // The next commit that goes through clears it.
        let (c, c_answer) = mpsc::sync_channel(1);
        assert!(commit_group(&mut conn, vec![op(insert(3), c)], &counts));
        assert_eq!(c_answer.recv().unwrap().unwrap(), 3);
        assert!(lock_failure(&counts).is_none());
    }

    /// Queues `n` writes from as many threads while the connection is busy, then lets
    /// them run; returns the writer's counts once every write is answered.
    fn queued_while_busy(grouping: Grouping, n: i64) -> (u64, u64) {
        let writer =
            Arc::new(Writer::start(Arc::new(Mutex::new(table())), grouping, None).unwrap());
        let busy = writer.lock();
        let threads: Vec<_> = (0..n)
            .map(|k| {
                let writer = writer.clone();
                std::thread::spawn(move || writer.write(insert(k)).unwrap())
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while writer.counts().0 < n as u64 {
            assert!(
                std::time::Instant::now() < deadline,
                "the writes were never queued"
            );
            std::thread::yield_now();
        }
        drop(busy);
        let mut done: Vec<i64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        done.sort_unstable();
        assert_eq!(done, (0..n).collect::<Vec<_>>());
        assert_eq!(rows(&writer.lock()).len() as i64, n);
        writer.counts()
    }

    #[test]
    fn writes_waiting_together_share_one_commit() {
        assert_eq!(queued_while_busy(Grouping::Shared, 20), (20, 1));
    }

    #[test]
    fn alone_commits_each_write_by_itself() {
        assert_eq!(queued_while_busy(Grouping::Alone, 5), (5, 5));
    }
}
