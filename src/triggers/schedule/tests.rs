//! Tests of the scheduler: ticks on time, restarts with each catch-up policy, two
//! schedulers on one store, overlap with a slow run, and the task on a paused clock.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::RwLock;

use super::*;
use crate::rules::load;
use crate::store::{JobNext, JobState, ScheduleState, SqliteStore, StoredRun};

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn no_env(_: &str) -> Option<String> {
    None
}

/// A rule set of scheduled rules: (name, lines under `on.schedule`). Without an
/// `overlap` line, ticks queue: these tests run no workers, so jobs stay pending.
fn rules(specs: &[(&str, &str)]) -> RuleSet {
    let dir = tempfile::tempdir().unwrap();
    for (name, schedule) in specs {
        let queue = "    overlap: queue\n";
        let schedule = if schedule.contains("overlap") {
            schedule.to_string()
        } else {
            format!("{schedule}{queue}")
        };
        let text = format!(
            "name: {name}\non:\n  schedule:\n{schedule}script: \"log::info(event.schedule.scheduled_for);\"\n"
        );
        std::fs::write(dir.path().join(format!("{name}.yaml")), text).unwrap();
    }
    let set = RuleSet::from_report(load::load_dir(dir.path(), &no_env).unwrap());
    assert!(!set.has_errors(), "{:#?}", set.diagnostics);
    set
}

fn open(path: &Path) -> Arc<dyn Store> {
    Arc::new(
        SqliteStore::open(path)
            .unwrap_or_else(|e| panic!("cannot open the store {}: {e}", path.display())),
    )
}

fn state(store: &dyn Store, rule: &str) -> ScheduleState {
    store
        .schedule_states()
        .unwrap()
        .into_iter()
        .find(|s| s.rule == rule)
        .unwrap()
}

/// Every stored tick event: (rule of its job, scheduled time), oldest first.
fn fired(store: &dyn Store) -> Vec<(String, DateTime<Utc>)> {
    let mut out: Vec<(String, DateTime<Utc>)> = store
        .events(None, 10_000)
        .unwrap()
        .into_iter()
        .map(|summary| {
            let event = store.event(&summary.id).unwrap().unwrap();
            assert_eq!(event.source, crate::event::Source::Schedule);
            assert_eq!(summary.jobs.len(), 1, "one job a tick");
            let tick = event.schedule.unwrap();
            (summary.jobs[0].rule.clone(), tick.scheduled_for)
        })
        .collect();
    out.sort();
    out
}

fn outcomes(reports: &[TickReport]) -> Vec<(&str, &'static str)> {
    reports
        .iter()
        .map(|r| {
            let kind = match r.outcome {
                TickOutcome::Fired { .. } => "fired",
                TickOutcome::Overlapped { .. } => "overlap",
                TickOutcome::Missed { .. } => "missed",
                TickOutcome::AlreadyHandled => "already",
            };
            (r.rule.as_str(), kind)
        })
        .collect()
}

/// Ends a claimed job as done, as a worker would after its run.
fn finish(store: &dyn Store, job: &crate::store::Job) {
    let run = StoredRun::of(
        job,
        format!("run-{}", job.id),
        "succeeded",
        Utc::now(),
        serde_json::json!({}),
    );
    store.finish(job, &run, JobNext::Done).unwrap();
}

#[test]
fn each_tick_fires_once_on_time_with_its_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("store.db"));
    let set = rules(&[("hourly", "    cron: '0 * * * *'\n")]);
    let mut scheduler = Scheduler::new(store.clone());
    scheduler.sync(&set, utc("2024-05-01T00:10:00Z"));
    assert_eq!(scheduler.next_due(), Some(utc("2024-05-01T01:00:00Z")));

    assert!(scheduler.run_due(utc("2024-05-01T00:59:59Z")).is_empty());
    let reports = scheduler.run_due(utc("2024-05-01T01:00:00Z"));
    assert_eq!(outcomes(&reports), [("hourly", "fired")]);
    assert!(scheduler.run_due(utc("2024-05-01T01:00:30Z")).is_empty());
    assert_eq!(scheduler.next_due(), Some(utc("2024-05-01T02:00:00Z")));
    let reports = scheduler.run_due(utc("2024-05-01T02:00:01Z"));
    assert_eq!(outcomes(&reports), [("hourly", "fired")]);

    assert_eq!(
        fired(store.as_ref()),
        [
            ("hourly".to_owned(), utc("2024-05-01T01:00:00Z")),
            ("hourly".to_owned(), utc("2024-05-01T02:00:00Z")),
        ]
    );
    let s = state(store.as_ref(), "hourly");
    assert_eq!((s.fired, s.skipped_missed, s.skipped_overlap), (2, 0, 0));
    assert_eq!(s.last_tick, Some(utc("2024-05-01T02:00:00Z")));
    assert_eq!(s.last_outcome.as_deref(), Some("fired"));

    // The script sees the tick.
    let summary = &store.events(None, 1).unwrap()[0];
    let event = store.event(&summary.id).unwrap().unwrap();
    let value = event.to_script_value();
    assert_eq!(value["source"], "schedule");
    assert_eq!(value["schedule"]["cron"], "0 * * * *");
    assert_eq!(value["schedule"]["scheduled_for"], "2024-05-01T02:00:00Z");
    assert_eq!(value["schedule"]["timezone"], "UTC");
}

#[test]
fn a_skipped_wall_time_fires_once_when_the_gap_ends() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("store.db"));
    let set = rules(&[(
        "nightly",
        "    cron: '30 2 * * *'\n    timezone: America/New_York\n",
    )]);
    let mut scheduler = Scheduler::new(store.clone());
    scheduler.sync(&set, utc("2024-03-09T12:00:00Z"));
    // 02:30 does not exist on 10 March; the tick is due at 03:00 EDT, 07:00 UTC.
    assert_eq!(scheduler.next_due(), Some(utc("2024-03-10T07:00:00Z")));
    let reports = scheduler.run_due(utc("2024-03-10T07:00:00Z"));
    assert_eq!(outcomes(&reports), [("nightly", "fired")]);
    assert_eq!(scheduler.next_due(), Some(utc("2024-03-11T06:30:00Z")));
    let value = store
        .event(&store.events(None, 1).unwrap()[0].id)
        .unwrap()
        .unwrap()
        .to_script_value();
    assert_eq!(value["schedule"]["local"], "2024-03-10T03:00:00-04:00");
}

/// A service that ran from 00:10 to 02:20 and stops; the next starts at 05:30.
fn run_then_stop(path: &Path, set: &RuleSet) {
    let store = open(path);
    let mut first = Scheduler::new(store.clone());
    first.sync(set, utc("2024-05-01T00:10:00Z"));
    for at in ["2024-05-01T01:00:00Z", "2024-05-01T02:00:00Z"] {
        assert_eq!(outcomes(&first.run_due(utc(at))), [("job", "fired")]);
    }
}

#[test]
fn a_restart_with_catch_up_latest_runs_the_last_missed_tick_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let set = rules(&[("job", "    cron: '0 * * * *'\n    catch_up: latest\n")]);
    run_then_stop(&path, &set);

    let store = open(&path);
    let mut second = Scheduler::new(store.clone());
    let start = utc("2024-05-01T05:30:00Z");
    second.sync(&set, start);
    let reports = second.run_due(start);
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].scheduled_for, utc("2024-05-01T05:00:00Z"));
    assert!(
        matches!(reports[0].outcome, TickOutcome::Fired { missed: 2, .. }),
        "{reports:?}"
    );
    // Nothing more until 06:00, then on time again.
    assert!(second.run_due(utc("2024-05-01T05:31:00Z")).is_empty());
    assert_eq!(
        outcomes(&second.run_due(utc("2024-05-01T06:00:00Z"))),
        [("job", "fired")]
    );

    let times: Vec<DateTime<Utc>> = fired(store.as_ref()).into_iter().map(|f| f.1).collect();
    assert_eq!(
        times,
        [
            utc("2024-05-01T01:00:00Z"),
            utc("2024-05-01T02:00:00Z"),
            utc("2024-05-01T05:00:00Z"),
            utc("2024-05-01T06:00:00Z"),
        ]
    );
    let s = state(store.as_ref(), "job");
    assert_eq!(
        (s.fired, s.skipped_missed),
        (4, 2),
        "03:00 and 04:00 missed"
    );
}

#[test]
fn a_restart_with_catch_up_none_runs_no_missed_tick_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let set = rules(&[("job", "    cron: '0 * * * *'\n    catch_up: none\n")]);
    run_then_stop(&path, &set);

    let store = open(&path);
    let mut second = Scheduler::new(store.clone());
    let start = utc("2024-05-01T05:30:00Z");
    second.sync(&set, start);
    let reports = second.run_due(start);
    assert_eq!(
        reports[0].outcome,
        TickOutcome::Missed { missed: 2 },
        "{reports:?}"
    );
    assert_eq!(
        outcomes(&second.run_due(utc("2024-05-01T06:00:00Z"))),
        [("job", "fired")]
    );
    let times: Vec<DateTime<Utc>> = fired(store.as_ref()).into_iter().map(|f| f.1).collect();
    assert_eq!(
        times,
        [
            utc("2024-05-01T01:00:00Z"),
            utc("2024-05-01T02:00:00Z"),
            utc("2024-05-01T06:00:00Z"),
        ]
    );
    let s = state(store.as_ref(), "job");
    assert_eq!((s.fired, s.skipped_missed), (3, 3), "03:00, 04:00, 05:00");
}

#[test]
fn with_catch_up_none_a_restart_just_after_a_tick_still_fires_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let set = rules(&[("job", "    cron: '0 * * * *'\n    catch_up: none\n")]);
    run_then_stop(&path, &set);
    let store = open(&path);
    let mut second = Scheduler::new(store.clone());
    // Down from 02:20 to 03:00:40: the 03:00 tick is 40 s late, on time.
    let start = utc("2024-05-01T03:00:40Z");
    second.sync(&set, start);
    assert_eq!(outcomes(&second.run_due(start)), [("job", "fired")]);
}

#[test]
fn a_restart_never_fires_a_tick_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let set = rules(&[("job", "    cron: '0 * * * *'\n    catch_up: latest\n")]);
    run_then_stop(&path, &set);
    // Restarted 20 seconds after the 02:00 tick fired: nothing is due.
    let store = open(&path);
    let mut second = Scheduler::new(store.clone());
    second.sync(&set, utc("2024-05-01T02:00:20Z"));
    assert!(second.run_due(utc("2024-05-01T02:00:20Z")).is_empty());
    assert_eq!(fired(store.as_ref()).len(), 2);
    // A scheduler that still believes 02:00 is due (it started before the tick was
    // recorded) finds it handled.
    let mut stale = Scheduler::new(store.clone());
    stale.sync(&set, utc("2024-05-01T00:30:00Z"));
    stale.tracked.get_mut("job").unwrap().cursor = utc("2024-05-01T01:30:00Z");
    let reports = stale.run_due(utc("2024-05-01T02:00:05Z"));
    assert_eq!(outcomes(&reports), [("job", "already")]);
    assert_eq!(fired(store.as_ref()).len(), 2);
}

#[test]
fn a_new_rule_starts_from_now_and_a_restart_catches_up_its_first_tick() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let set = rules(&[("nightly", "    cron: '30 2 * * *'\n")]);
    {
        let mut first = Scheduler::new(open(&path));
        first.sync(&set, utc("2024-05-01T01:00:00Z"));
        assert!(first.run_due(utc("2024-05-01T01:00:00Z")).is_empty());
    }
    // Down over 02:30; back at 03:00.
    let store = open(&path);
    let mut second = Scheduler::new(store.clone());
    second.sync(&set, utc("2024-05-01T03:00:00Z"));
    let reports = second.run_due(utc("2024-05-01T03:00:00Z"));
    assert!(
        matches!(reports[0].outcome, TickOutcome::Fired { missed: 0, .. }),
        "{reports:?}"
    );
    assert_eq!(reports[0].scheduled_for, utc("2024-05-01T02:30:00Z"));
}

#[test]
fn two_schedulers_on_one_store_fire_each_tick_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let set = Arc::new(rules(&[
        ("five", "    cron: '*/5 * * * *'\n"),
        ("hourly", "    cron: '0 * * * *'\n    catch_up: none\n"),
    ]));
    let start = utc("2024-05-01T00:00:30Z");
    // Each service reads the clock a few milliseconds apart, every 10 seconds, for
    // three hours.
    let threads: Vec<_> = (0..2)
        .map(|n| {
            let (path, set) = (path.clone(), set.clone());
            std::thread::spawn(move || {
                let mut scheduler = Scheduler::new(open(&path));
                scheduler.sync(&set, start);
                let mut reports = Vec::new();
                for step in 0..(3 * 360) {
                    let now = start
                        + chrono::TimeDelta::seconds(10 * step)
                        + chrono::TimeDelta::milliseconds(3 * n);
                    reports.extend(scheduler.run_due(now));
                }
                reports
            })
        })
        .collect();
    let reports: Vec<TickReport> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();

    let store = open(&path);
    let events = fired(store.as_ref());
    let five = events.iter().filter(|e| e.0 == "five").count();
    let hourly = events.iter().filter(|e| e.0 == "hourly").count();
    assert_eq!((five, hourly), (36, 3), "one event a tick");
    let mut unique = events.clone();
    unique.dedup();
    assert_eq!(unique.len(), events.len(), "no tick twice");
    let fired_reports = reports
        .iter()
        .filter(|r| matches!(r.outcome, TickOutcome::Fired { .. }))
        .count();
    assert_eq!(fired_reports, 39, "each tick fired by one of the two");
    assert!(
        !reports.iter().any(|r| matches!(
            r.outcome,
            TickOutcome::Missed { .. } | TickOutcome::Overlapped { .. }
        )),
        "the overlap check sees no unfinished job of a tick whose job was never run? {reports:?}"
    );
    assert_eq!(state(store.as_ref(), "five").skipped_missed, 0);
}

#[test]
fn overlap_skip_skips_and_counts_ticks_while_a_slow_run_is_unfinished() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("store.db"));
    let set = rules(&[("slow", "    cron: '*/10 * * * *'\n    overlap: skip\n")]);
    let mut scheduler = Scheduler::new(store.clone());
    scheduler.sync(&set, utc("2024-05-01T00:05:00Z"));
    let tick = |s: &mut Scheduler, at: &str| outcomes(&s.run_due(utc(at))).pop().unwrap().1;

    assert_eq!(tick(&mut scheduler, "2024-05-01T00:10:00Z"), "fired");
    // Still queued counts as unfinished.
    assert_eq!(tick(&mut scheduler, "2024-05-01T00:20:00Z"), "overlap");
    // A worker takes it and runs for half an hour.
    let job = store.claim(Duration::from_secs(3600)).unwrap().unwrap();
    assert_eq!(store.job_state(job.id).unwrap(), Some(JobState::Running));
    assert_eq!(tick(&mut scheduler, "2024-05-01T00:30:00Z"), "overlap");
    assert_eq!(tick(&mut scheduler, "2024-05-01T00:40:00Z"), "overlap");
    finish(store.as_ref(), &job);
    assert_eq!(tick(&mut scheduler, "2024-05-01T00:50:00Z"), "fired");

    let s = state(store.as_ref(), "slow");
    assert_eq!((s.fired, s.skipped_overlap, s.skipped_missed), (2, 3, 0));
    assert_eq!(fired(store.as_ref()).len(), 2);
}

#[test]
fn overlap_queue_queues_the_tick_and_runs_it_after_the_slow_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("store.db"));
    let set = rules(&[("slow", "    cron: '*/10 * * * *'\n    overlap: queue\n")]);
    let mut scheduler = Scheduler::new(store.clone());
    scheduler.sync(&set, utc("2024-05-01T00:05:00Z"));
    assert_eq!(
        outcomes(&scheduler.run_due(utc("2024-05-01T00:10:00Z"))),
        [("slow", "fired")]
    );
    let first = store.claim(Duration::from_secs(3600)).unwrap().unwrap();
    assert_eq!(
        outcomes(&scheduler.run_due(utc("2024-05-01T00:20:00Z"))),
        [("slow", "fired")]
    );
    // The second tick's job waits while the first runs.
    assert!(store.claim(Duration::from_secs(60)).unwrap().is_none());
    finish(store.as_ref(), &first);
    let second = store.claim(Duration::from_secs(60)).unwrap().unwrap();
    assert_ne!(second.id, first.id);
    assert_eq!(state(store.as_ref(), "slow").skipped_overlap, 0);
}

#[test]
fn a_host_that_slept_past_a_tick_follows_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("store.db"));
    let set = rules(&[
        ("latest", "    cron: '0 * * * *'\n    catch_up: latest\n"),
        ("none", "    cron: '0 * * * *'\n    catch_up: none\n"),
    ]);
    let mut scheduler = Scheduler::new(store.clone());
    scheduler.sync(&set, utc("2024-05-01T00:30:00Z"));
    // The process wakes 3 h 10 min later: 01:00 to 03:00 are due, 03:00 is late.
    let reports = scheduler.run_due(utc("2024-05-01T03:40:00Z"));
    assert_eq!(
        outcomes(&reports),
        [("latest", "fired"), ("none", "missed")]
    );
    assert_eq!(state(store.as_ref(), "latest").skipped_missed, 2);
    assert_eq!(state(store.as_ref(), "none").skipped_missed, 3);
}

#[test]
fn rules_that_are_no_longer_loaded_stop_and_new_ones_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("store.db"));
    let mut scheduler = Scheduler::new(store.clone());
    scheduler.sync(
        &rules(&[("a", "    cron: '@hourly'\n")]),
        utc("2024-05-01T00:00:00Z"),
    );
    assert_eq!(scheduler.rules(), ["a"]);
    scheduler.sync(
        &rules(&[("b", "    cron: '@daily'\n")]),
        utc("2024-05-01T00:30:00Z"),
    );
    assert_eq!(scheduler.rules(), ["b"]);
    assert_eq!(scheduler.next_due(), Some(utc("2024-05-02T00:00:00Z")));
}

// The scheduler task, on a paused clock.

fn shared(set: RuleSet) -> SharedRules {
    Arc::new(RwLock::new(Arc::new(set)))
}

/// A worker that finishes every job within a minute of the paused clock.
fn fast_worker(store: Arc<dyn Store>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let store = store.clone();
            let _ = tokio::task::spawn_blocking(move || {
                while let Ok(Some(job)) = store.claim(Duration::from_secs(60)) {
                    finish(store.as_ref(), &job);
                }
            })
            .await;
        }
    })
}

#[tokio::test(start_paused = true)]
async fn the_task_fires_a_day_of_ticks_on_a_paused_clock() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("store.db"));
    // The default overlap policy, skip, with runs that end within a second.
    let set = shared(rules(&[(
        "hourly",
        "    cron: '0 * * * *'\n    timezone: America/New_York\n    overlap: skip\n",
    )]));
    let worker = fast_worker(store.clone());
    let clock = Arc::new(TokioClock::starting_at(utc("2024-03-09T23:30:00Z")));
    let handle = spawn(store.clone(), set, Arc::new(Wake::default()), clock.clone());
    // A day across the spring-forward change: every UTC hour has one local hour.
    tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
    handle.shutdown().await;
    worker.abort();
    assert_eq!(state(store.as_ref(), "hourly").skipped_overlap, 0);
    let times: Vec<DateTime<Utc>> = fired(store.as_ref()).into_iter().map(|f| f.1).collect();
    assert_eq!(times.len(), 24);
    assert_eq!(times[0], utc("2024-03-10T00:00:00Z"));
    assert_eq!(times[23], utc("2024-03-10T23:00:00Z"));
    assert_eq!(state(store.as_ref(), "hourly").skipped_missed, 0);
}

#[tokio::test(start_paused = true)]
async fn two_tasks_on_one_store_fire_each_tick_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let set = shared(rules(&[("quarter", "    cron: '*/15 * * * *'\n")]));
    let clock = Arc::new(TokioClock::starting_at(utc("2024-05-01T00:00:10Z")));
    let handles: Vec<SchedulerHandle> = (0..2)
        .map(|_| {
            spawn(
                open(&path),
                set.clone(),
                Arc::new(Wake::default()),
                clock.clone(),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(6 * 3600)).await;
    for handle in handles {
        handle.shutdown().await;
    }
    let store = open(&path);
    let events = fired(store.as_ref());
    assert_eq!(events.len(), 24, "four ticks an hour for six hours");
    let s = state(store.as_ref(), "quarter");
    assert_eq!((s.fired, s.skipped_missed), (24, 0));
}

#[tokio::test(start_paused = true)]
async fn a_restart_in_the_middle_follows_each_catch_up_policy() {
    for (policy, fired_after_restart, missed) in [("latest", 1, 3), ("none", 0, 4)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let set = shared(rules(&[(
            "job",
            &format!("    cron: '0 * * * *'\n    catch_up: {policy}\n"),
        )]));
        let start = utc("2024-05-01T00:30:00Z");
        // Up for five hours (01:00 to 05:00 fire), down for four (06:00 to 09:00
        // are missed), then up for twenty minutes.
        let clock = Arc::new(TokioClock::starting_at(start));
        let first = spawn(open(&path), set.clone(), Arc::new(Wake::default()), clock);
        tokio::time::sleep(Duration::from_secs(5 * 3600)).await;
        first.shutdown().await;
        let clock = Arc::new(TokioClock::starting_at(utc("2024-05-01T09:30:00Z")));
        let second = spawn(open(&path), set.clone(), Arc::new(Wake::default()), clock);
        tokio::time::sleep(Duration::from_secs(1200)).await;
        second.shutdown().await;

        let store = open(&path);
        let times: Vec<DateTime<Utc>> = fired(store.as_ref()).into_iter().map(|f| f.1).collect();
        assert_eq!(times.len(), 5 + fired_after_restart, "{policy}: {times:?}");
        if fired_after_restart == 1 {
            assert_eq!(times[5], utc("2024-05-01T09:00:00Z"), "the latest missed");
        }
        let s = state(store.as_ref(), "job");
        assert_eq!(s.skipped_missed, missed, "{policy}");
    }
}

#[test]
fn a_tick_counted_as_missed_cannot_fire_later_from_a_lagging_scheduler() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let set = rules(&[("job", "    cron: '0 * * * *'\n    catch_up: latest\n")]);
    run_then_stop(&path, &set);
    // Back at 05:30: 05:00 fires, and 03:00 and 04:00 are counted as missed.
    let store = open(&path);
    let mut back = Scheduler::new(store.clone());
    back.sync(&set, utc("2024-05-01T05:30:00Z"));
    assert_eq!(
        outcomes(&back.run_due(utc("2024-05-01T05:30:00Z"))),
        [("job", "fired")]
    );
    // A scheduler that lags behind reaches 04:00, which has no row of its own.
    let mut lagging = Scheduler::new(open(&path));
    lagging.sync(&set, utc("2024-05-01T02:30:00Z"));
    lagging.tracked.get_mut("job").unwrap().cursor = utc("2024-05-01T03:30:00Z");
    let reports = lagging.run_due(utc("2024-05-01T04:00:10Z"));
    assert_eq!(outcomes(&reports), [("job", "already")]);
    assert_eq!(fired(store.as_ref()).len(), 3);
    let s = state(store.as_ref(), "job");
    assert_eq!((s.fired, s.skipped_missed), (3, 2));
}
