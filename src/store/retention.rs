//! Retention: finished events older than the retention setting are deleted with their
//! jobs, runs and files, and dedupe keys once their window is over, a few hundred at a
//! time so that deliveries never wait long behind a deletion.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::{Pruned, Result, Store};

/// Events and keys deleted per transaction.
const BATCH: usize = 500;

/// How often the service prunes.
const EVERY: Duration = Duration::from_secs(600);

/// How long after the start the first pass waits, so that it does not compete with
/// the jobs a restart has to catch up on.
const FIRST_AFTER: Duration = Duration::from_secs(60);

/// Deletes everything that `retention` and `dedupe_window` no longer keep at `now`.
pub fn prune_all(
    store: &dyn Store,
    now: DateTime<Utc>,
    retention: Duration,
    dedupe_window: Duration,
) -> Result<Pruned> {
    // A span too long to subtract keeps everything.
    let ago = |span: Duration| {
        chrono::Duration::from_std(span)
            .ok()
            .and_then(|span| now.checked_sub_signed(span))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    };
    let (before, dedupe_before) = (ago(retention), ago(dedupe_window));
    let mut total = Pruned::default();
    loop {
        let pass = store.prune(before, dedupe_before, BATCH)?;
        total.events += pass.events;
        total.dedupe_keys += pass.dedupe_keys;
        if pass.events < BATCH as u64 && pass.dedupe_keys < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Prunes every ten minutes until the task is dropped.
pub fn spawn(
    store: Arc<dyn Store>,
    retention: Duration,
    dedupe_window: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(FIRST_AFTER).await;
        loop {
            let store = store.clone();
            let pass = tokio::task::spawn_blocking(move || {
                prune_all(store.as_ref(), Utc::now(), retention, dedupe_window)
            })
            .await;
            match pass {
                Ok(Ok(pruned)) if pruned != Pruned::default() => info!(
                    events = pruned.events,
                    dedupe_keys = pruned.dedupe_keys,
                    "deleted what the retention settings no longer keep"
                ),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(error = %e, "cannot prune the store; trying again later"),
                Err(e) => warn!(error = %e, "the pruning pass stopped"),
            }
            tokio::time::sleep(EVERY).await;
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::store::{
        DedupeKey, Inserted, JobNext, JobState, JournalEntry, NewEvent, NewFile, NewJob, RunFilter,
        SqliteStore, StoredRun,
    };

    const DAY: Duration = Duration::from_secs(86_400);

    fn event(rule: &str, key: Option<&str>) -> NewEvent {
        let event = Event::manual(&serde_json::Map::new());
        NewEvent {
            files: vec![NewFile {
                id: format!("{}-file", event.id),
                bytes: bytes::Bytes::from_static(b"photo"),
            }],
            jobs: vec![NewJob {
                rule: rule.into(),
                max_attempts: 1,
            }],
            dedupe: key.map(|key| DedupeKey {
                rule: rule.into(),
                key: key.into(),
                window: 7 * DAY,
            }),
            event,
        }
    }

    /// Claims the next job and ends it as told, with a run and a journal entry.
    fn run_next(store: &SqliteStore, next: JobNext) -> i64 {
        let job = store.claim(Duration::from_secs(60)).unwrap().unwrap();
        store
            .record_write(
                job.id,
                &JournalEntry {
                    sequence: 1,
                    fingerprint: "create".into(),
                    result: Some(serde_json::json!({"id": "7"})),
                },
            )
            .unwrap();
        let run = StoredRun::of(
            &job,
            format!("run-{}", job.id),
            "succeeded",
            Utc::now(),
            serde_json::json!({"changes": [{"client_id": "7"}]}),
        );
        store.finish(&job, &run, next).unwrap();
        job.id
    }

    #[test]
    fn finished_events_go_and_unfinished_work_stays() {
        let store = SqliteStore::in_memory().unwrap();
        let done = event("r", Some("k1"));
        let dead = event("r", None);
        let replayed = event("r", None);
        let waiting = event("r", None);
        let ids: Vec<String> = [&done, &dead, &replayed, &waiting]
            .iter()
            .map(|e| e.event.id.clone())
            .collect();
        let files: Vec<String> = [&done, &dead, &replayed, &waiting]
            .iter()
            .map(|e| e.files[0].id.clone())
            .collect();
        store
            .insert_batch(vec![done, dead, replayed, waiting])
            .unwrap();
        let done_job = run_next(&store, JobNext::Done);
        let dead_job = run_next(&store, JobNext::Dead);
        let replayed_job = run_next(&store, JobNext::Dead);
        // The third event's dead letter is replayed, and the replay succeeds.
        store.replay_event(&ids[2], Some("r"), &|_| 1).unwrap();
        // The fourth event's job is still waiting: claims take the oldest due first,
        // and the replay was queued after it.
        let waiting_job = run_next(
            &store,
            JobNext::Retry(Utc::now() + chrono::Duration::days(1)),
        );
        run_next(&store, JobNext::Done);

        // Nothing is old enough yet.
        let now = Utc::now();
        assert_eq!(
            prune_all(&store, now, 30 * DAY, 7 * DAY).unwrap(),
            Pruned::default()
        );
        // Forty days on, the done event and the replayed one go; the dead letter and
        // the waiting job stay. The dedupe key outlived its window too.
        let later = now + chrono::Duration::days(40);
        let pruned = prune_all(&store, later, 30 * DAY, 7 * DAY).unwrap();
        assert_eq!(
            pruned,
            Pruned {
                events: 2,
                dedupe_keys: 1
            }
        );
        let kept: Vec<bool> = ids
            .iter()
            .map(|id| store.event(id).unwrap().is_some())
            .collect();
        assert_eq!(kept, vec![false, true, false, true]);
        let files: Vec<bool> = files
            .iter()
            .map(|id| store.uploaded_file(id).unwrap().is_some())
            .collect();
        assert_eq!(files, vec![false, true, false, true]);
        assert_eq!(store.job_state(done_job).unwrap(), None);
        assert_eq!(store.job_state(replayed_job).unwrap(), None);
        assert_eq!(store.job_state(dead_job).unwrap(), Some(JobState::Dead));
        assert_eq!(
            store.job_state(waiting_job).unwrap(),
            Some(JobState::Pending)
        );
        assert!(store.journal(done_job).unwrap().is_empty());
        assert_eq!(store.journal(dead_job).unwrap().len(), 1);
        // Runs of the deleted events are gone, from the client's history as well.
        let runs = store
            .runs(&RunFilter {
                client_id: Some("7".into()),
                limit: 100,
                ..RunFilter::default()
            })
            .unwrap();
        let mut events: Vec<&str> = runs.iter().map(|r| r.event_id.as_str()).collect();
        events.sort_unstable();
        let mut expected = vec![ids[1].as_str(), ids[3].as_str()];
        expected.sort_unstable();
        assert_eq!(events, expected);
        // With its key forgotten, the same delivery is an event again.
        let again = store.insert_batch(vec![event("r", Some("k1"))]).unwrap();
        assert_eq!(again, vec![Inserted::Stored]);
    }

    #[test]
    fn a_long_backlog_is_pruned_in_batches_and_spans_too_long_keep_everything() {
        let store = SqliteStore::in_memory().unwrap();
        let batch: Vec<NewEvent> = (0..1_200)
            .map(|n| {
                let mut e = event("r", Some(&format!("k{n}")));
                e.jobs.clear();
                e
            })
            .collect();
        store.insert_batch(batch).unwrap();
        let later = Utc::now() + chrono::Duration::days(40);
        let forever = Duration::from_secs(u64::MAX);
        assert_eq!(
            prune_all(&store, later, forever, forever).unwrap(),
            Pruned::default()
        );
        assert_eq!(
            prune_all(&store, later, 30 * DAY, 7 * DAY).unwrap(),
            Pruned {
                events: 1_200,
                dedupe_keys: 1_200
            }
        );
        assert!(store.events(None, 10).unwrap().is_empty());
    }
}
