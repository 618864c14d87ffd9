//! Bulk jobs: the shipped nightly rule, fired by the scheduler and run by a worker over
//! thousands of clients, makes one list request per 200 clients and one write per
//! client it changes, nothing else; `limits.max_changes` stops it before it changes
//! more.

// A failed unwrap is a failed test, with the value in its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use clientrules::admin::metrics::Metrics;
use clientrules::clients::clock::ManualClock;
use clientrules::clients::embedded::{EmbeddedBackend, EmbeddedStore};
use clientrules::clients::spectora::{ApiKey, SpectoraClient, SpectoraConfig};
use clientrules::clients::{ApiError, Backend, Client, ListQuery, Page};
use clientrules::rules::{RuleSet, load};
use clientrules::sim::{self, SimConfig};
use clientrules::store::{JobState, RunFilter, SqliteStore, Store, TickOutcome};
use clientrules::triggers::schedule::Scheduler;
use clientrules::worker::{self, Wake};
use serde_json::{Map, Value, json};

/// The backend requests of a run, by operation.
#[derive(Debug, Default)]
struct Counts {
    list: AtomicU64,
    get: AtomicU64,
    create: AtomicU64,
    update: AtomicU64,
    /// The largest page asked for.
    page_size: AtomicU64,
}

/// A backend that counts every request before passing it on.
struct Counting {
    inner: Box<dyn Backend>,
    counts: Arc<Counts>,
}

impl Backend for Counting {
    fn list(&self, query: &ListQuery) -> Result<Page, ApiError> {
        self.counts.list.fetch_add(1, Ordering::SeqCst);
        self.counts
            .page_size
            .fetch_max(u64::from(query.page_size), Ordering::SeqCst);
        self.inner.list(query)
    }

    fn get(&self, id: &str) -> Result<Option<Client>, ApiError> {
        self.counts.get.fetch_add(1, Ordering::SeqCst);
        self.inner.get(id)
    }

    fn create(&self, attributes: &Map<String, Value>) -> Result<Client, ApiError> {
        self.counts.create.fetch_add(1, Ordering::SeqCst);
        self.inner.create(attributes)
    }

    fn update(&self, id: &str, attributes: &Map<String, Value>) -> Result<Client, ApiError> {
        self.counts.update.fetch_add(1, Ordering::SeqCst);
        self.inner.update(id, attributes)
    }

    fn name(&self) -> &'static str {
        "counting"
    }
}

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// `n` clients: every tenth has three inspection tags, and every hundredth already has
/// the repeat-client tag as well.
fn seed(backend: &EmbeddedBackend, n: usize) {
    seed_every(backend, n, 10);
}

/// `n` clients: one in `every` has three inspection tags, and one in `10 × every`
/// already has the repeat-client tag as well.
fn seed_every(backend: &EmbeddedBackend, n: usize, every: usize) {
    let items: Vec<Map<String, Value>> = (0..n)
        .map(|i| {
            let mut tags = vec![json!("website-lead")];
            if i % every == 0 {
                tags.extend([
                    json!("inspection-2023-01-05"),
                    json!("inspection-2024-02-11"),
                    json!("inspection-2025-03-20"),
                ]);
            }
            if i % (10 * every) == 0 {
                tags.push(json!("repeat-client"));
            }
            let client = json!({
                "email": format!("client{i}@example.com"),
                "first_name": format!("Client{i}"),
                "tags": tags,
            });
            client.as_object().cloned().unwrap()
        })
        .collect();
    for chunk in items.chunks(5_000) {
        backend.create_many(chunk).unwrap();
    }
}

/// Clients tagged repeat-client, counted on the backend itself.
fn repeat_clients(backend: &dyn Backend) -> usize {
    let mut query = ListQuery::first_page();
    query.tags = vec!["repeat-client".into()];
    let mut n = 0;
    loop {
        let page = backend.list(&query).unwrap();
        n += page.clients.len();
        match page.next {
            Some(next) if !page.clients.is_empty() => query.page = next,
            _ => return n,
        }
    }
}

/// The shipped rules; the nightly rule is among them.
fn shipped() -> RuleSet {
    let report = load::load_dir(&common::shipped_rules(), &|_| None).unwrap();
    let set = RuleSet::from_report(report);
    assert!(
        set.get("repeat-clients").is_some(),
        "{:#?}",
        set.diagnostics
    );
    set
}

/// Fires the nightly rule's 02:30 Denver tick through the scheduler, runs its job on a
/// worker over `backend`, and returns the run record.
fn run_nightly(backend: Arc<dyn Backend>) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
    let set = Arc::new(shipped());

    let mut scheduler = Scheduler::new(store.clone());
    scheduler.sync(&set, utc("2025-06-10T08:00:00Z"));
    let reports = scheduler.run_due(utc("2025-06-10T08:30:00Z"));
    let fired: Vec<_> = reports
        .iter()
        .filter(|r| matches!(r.outcome, TickOutcome::Fired { .. }))
        .collect();
    assert_eq!(fired.len(), 1, "{reports:?}");
    assert_eq!(fired[0].rule, "repeat-clients");

    let context = worker::Context {
        store: store.clone(),
        rules: Arc::new(RwLock::new(set)),
        backend,
        wake: Arc::new(Wake::default()),
        stopping: Arc::new(AtomicBool::new(false)),
        cancel: Arc::new(AtomicBool::new(false)),
        metrics: Arc::new(Metrics::default()),
    };
    let job = store.claim(Duration::from_secs(600)).unwrap().unwrap();
    assert_eq!(job.rule, "repeat-clients");
    worker::execute(&context, job.clone());
    let state = store.job_state(job.id).unwrap();
    let runs = store
        .runs(&RunFilter {
            rule: Some("repeat-clients".into()),
            limit: 1,
            ..RunFilter::default()
        })
        .unwrap();
    let mut record = runs.into_iter().next().unwrap().record;
    record["job_state"] = json!(state.map(|s| s.as_str()));
    record
}

#[test]
fn the_nightly_rule_over_ten_thousand_clients_lists_once_per_200_and_writes_once_per_change() {
    let clients = EmbeddedStore::in_memory().unwrap();
    let backend = clients.company("default");
    seed(&backend, 10_000);
    assert_eq!(repeat_clients(&backend), 100);

    let counts = Arc::new(Counts::default());
    let counting = Arc::new(Counting {
        inner: Box::new(backend.clone()),
        counts: counts.clone(),
    });
    let record = run_nightly(counting);

    assert_eq!(record["status"], "succeeded", "{:#}", record["error"]);
    assert_eq!(record["job_state"], JobState::Done.as_str());
    // 1,000 clients qualify and 100 of them have the tag already.
    assert_eq!(counts.list.load(Ordering::SeqCst), 50, "one list per 200");
    assert_eq!(counts.page_size.load(Ordering::SeqCst), 200);
    assert_eq!(
        counts.update.load(Ordering::SeqCst),
        900,
        "one write per change"
    );
    assert_eq!(counts.get.load(Ordering::SeqCst), 0, "nothing else");
    assert_eq!(counts.create.load(Ordering::SeqCst), 0, "nothing else");
    assert_eq!(
        record["progress"],
        json!({"pages": 50, "clients_seen": 10_000, "changed": 900})
    );
    assert_eq!(record["api_calls"].as_array().unwrap().len(), 950);
    let logs = record["logs"].to_string();
    assert!(
        logs.contains("night of 2025-06-10T02:30:00-06:00: 900 new repeat-client"),
        "{logs}"
    );
    assert_eq!(repeat_clients(&backend), 1_000);
}

#[test]
fn max_changes_stops_the_run_before_it_changes_more_clients() {
    let clients = EmbeddedStore::in_memory().unwrap();
    let backend = clients.company("default");
    // 1,080 of 12,000 need the tag: over the rule's max_changes of 1,000.
    seed(&backend, 12_000);
    let counts = Arc::new(Counts::default());
    let counting = Arc::new(Counting {
        inner: Box::new(backend.clone()),
        counts: counts.clone(),
    });
    let record = run_nightly(counting);

    assert_eq!(record["status"], "failed");
    let message = record["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("limit max_changes reached")
            && message.contains("the rule allows 1000 changed clients a run"),
        "{message}"
    );
    assert_eq!(record["error"]["limit"], "max_changes");
    assert_eq!(record["retryable"], false);
    assert_eq!(record["job_state"], JobState::Dead.as_str(), "not retried");
    assert_eq!(counts.update.load(Ordering::SeqCst), 1_000);
    assert_eq!(record["progress"]["changed"], 1_000);
    assert_eq!(repeat_clients(&backend), 120 + 1_000);
}

#[test]
fn the_nightly_rule_over_a_thousand_clients_through_the_simulator() {
    let key = "bulk-key";
    let sim = sim::spawn(SimConfig::new([key]), "127.0.0.1:0".parse().unwrap()).unwrap();
    seed(&sim.backend(key), 1_000);
    sim.faults.reset_counts();

    let mut config = SpectoraConfig::new(sim.base_url(), ApiKey::new(key).unwrap());
    config.requests_per_minute = 0;
    let http = SpectoraClient::with_clock(&config, ManualClock::new()).unwrap();
    let record = run_nightly(Arc::new(http));

    assert_eq!(record["status"], "succeeded", "{:#}", record["error"]);
    let counts = sim.faults.counts();
    let count = |route: &str| counts.get(route).copied().unwrap_or(0);
    assert_eq!(count("GET /v2/contacts"), 5, "{counts:?}");
    assert_eq!(count("PATCH /v2/contacts/{id}"), 90, "{counts:?}");
    let total: u64 = counts.values().sum();
    assert_eq!(total, 95, "nothing else: {counts:?}");
    assert_eq!(repeat_clients(&sim.backend(key)), 100);
}

// `clients::each` in scripts.

/// A backend whose list requests after the first `ok_pages` fail with a 503.
struct FailingAfter {
    inner: Box<dyn Backend>,
    ok_pages: u64,
    lists: AtomicU64,
}

impl Backend for FailingAfter {
    fn list(&self, query: &ListQuery) -> Result<Page, ApiError> {
        if self.lists.fetch_add(1, Ordering::SeqCst) >= self.ok_pages {
            return Err(ApiError::unavailable("list", "the API is down"));
        }
        self.inner.list(query)
    }
    fn get(&self, id: &str) -> Result<Option<Client>, ApiError> {
        self.inner.get(id)
    }
    fn create(&self, attributes: &Map<String, Value>) -> Result<Client, ApiError> {
        self.inner.create(attributes)
    }
    fn update(&self, id: &str, attributes: &Map<String, Value>) -> Result<Client, ApiError> {
        self.inner.update(id, attributes)
    }
    fn name(&self) -> &'static str {
        "failing"
    }
}

/// Runs a script, as a scheduled rule with these limits, over `backend`.
fn run_script(
    script: &str,
    limits: &str,
    backend: Arc<dyn Backend>,
) -> (
    clientrules::script::Outcome,
    Arc<clientrules::clients::session::Session>,
) {
    use clientrules::clients::session::{Mode, Session};
    let dir = tempfile::tempdir().unwrap();
    let indented: String = script.lines().map(|l| format!("  {l}\n")).collect();
    let text = format!(
        "name: walk\non:\n  schedule:\n    cron: '@daily'\nlimits:\n{limits}script: |\n{indented}"
    );
    std::fs::write(dir.path().join("walk.yaml"), text).unwrap();
    let set = RuleSet::from_report(load::load_dir(dir.path(), &|_| None).unwrap());
    assert!(!set.has_errors(), "{:#?}", set.diagnostics);
    let rule = set.get("walk").unwrap().clone();
    let session = Arc::new(Session::new(
        backend,
        Mode::Live,
        rule.limits.max_api_calls,
        rule.limits.max_changes,
    ));
    let trigger = rule.schedule().unwrap();
    let now = Utc::now();
    let event = clientrules::triggers::schedule::tick_event(trigger, now, now);
    let outcome = clientrules::script::run(&rule, &event.to_script_value(), session.clone(), None);
    (outcome, session)
}

fn counted(n: usize) -> (Arc<Counts>, Arc<dyn Backend>, EmbeddedBackend) {
    let clients = EmbeddedStore::in_memory().unwrap();
    let backend = clients.company("default");
    seed(&backend, n);
    let counts = Arc::new(Counts::default());
    let counting: Arc<dyn Backend> = Arc::new(Counting {
        inner: Box::new(backend.clone()),
        counts: counts.clone(),
    });
    (counts, counting, backend)
}

#[test]
fn each_fetches_pages_only_as_the_loop_asks() {
    let (counts, backend, _) = counted(1_000);
    let (outcome, _) = run_script(
        "let n = 0;\nfor c in clients::each(#{}) {\n    n += 1;\n    if n == 250 { break; }\n}\nlog::info(`${n}`);",
        "  max_api_calls: 100\n",
        backend,
    );
    assert_eq!(
        format!("{:?}", outcome.status),
        "Succeeded",
        "{:?}",
        outcome.error
    );
    assert_eq!(outcome.logs[0].message, "250");
    assert_eq!(
        counts.list.load(Ordering::SeqCst),
        2,
        "two pages for 250 clients"
    );
}

#[test]
fn each_takes_the_search_filters_and_a_limit() {
    let (counts, backend, _) = counted(1_000);
    let (outcome, session) = run_script(
        "let n = 0;\nfor c in clients::each(#{ tag: \"repeat-client\" }) { n += 1; }\n\
         let m = 0;\nfor c in clients::each(#{ limit: 5 }) { m += 1; }\nlog::info(`${n} ${m}`);",
        "  max_api_calls: 100\n",
        backend,
    );
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_eq!(outcome.logs[0].message, "10 5");
    assert_eq!(counts.list.load(Ordering::SeqCst), 2);
    assert_eq!(session.progress().clients_seen, 15);
}

#[test]
fn looping_over_each_again_walks_again() {
    let (counts, backend, _) = counted(300);
    let (outcome, _) = run_script(
        "let all = clients::each(#{});\nlet n = 0;\nfor c in all { n += 1; }\nfor c in all { n += 1; }\nlog::info(`${n}`);",
        "  max_api_calls: 100\n",
        backend,
    );
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_eq!(outcome.logs[0].message, "600");
    assert_eq!(counts.list.load(Ordering::SeqCst), 4);
}

#[test]
fn a_walk_past_max_api_calls_fails_on_the_limit() {
    let (_, backend, _) = counted(1_000);
    let (outcome, _) = run_script(
        "for c in clients::each(#{}) {\n    try { clients::tag(c, \"seen\"); } catch { }\n}",
        "  max_api_calls: 30\n",
        backend,
    );
    let error = outcome.error.unwrap();
    assert_eq!(
        error.limit.as_deref(),
        Some("max_api_calls"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("the rule allows 30 API calls a run"),
        "{}",
        error.message
    );
}

#[test]
fn an_api_failure_in_the_middle_of_a_walk_fails_the_run_for_a_retry() {
    let clients = EmbeddedStore::in_memory().unwrap();
    let inner = clients.company("default");
    seed(&inner, 500);
    let backend = Arc::new(FailingAfter {
        inner: Box::new(inner),
        ok_pages: 1,
        lists: AtomicU64::new(0),
    });
    let (outcome, session) = run_script(
        "let n = 0;\nfor c in clients::each(#{}) { n += 1; }",
        "  max_api_calls: 100\n",
        backend,
    );
    let error = outcome.error.unwrap();
    assert!(error.message.contains("clients::each"), "{}", error.message);
    assert!(error.message.contains("503"), "{}", error.message);
    assert!(outcome.retryable, "a 503 is worth a retry");
    assert_eq!(session.progress().clients_seen, 200);
    assert_eq!(
        error.line,
        Some(9),
        "the `for` line of the script in the rule file"
    );
}

#[test]
fn each_refuses_what_is_not_a_query() {
    let (_, backend, _) = counted(10);
    let (outcome, _) = run_script(
        "for c in clients::each(5) { }",
        "  max_api_calls: 100\n",
        backend,
    );
    let error = outcome.error.unwrap();
    assert!(
        error.message.contains("expected a map"),
        "{}",
        error.message
    );
}

// The benchmark. Not a timed test: it prints its figures. Run it with
// `cargo test --release --test bulk -- --ignored --nocapture bench_`.

/// A memory figure of this process from `/proc/self/status`, in KiB (Linux): `VmRSS`
/// now, or `VmHWM` the peak since the last reset.
fn memory_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Starts a new peak: the kernel sets the high-water mark to the current size.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Runs the nightly rule over `n` clients through a simulator with a rate limit, on the
/// real clock; prints and returns (requests, seconds, peak KiB during the run).
fn bench_run(n: usize, per_minute: u32) -> (u64, f64, Option<u64>) {
    use clientrules::clients::clock::SystemClock;
    let key = "bench-key";
    let sim = sim::spawn(SimConfig::new([key]), "127.0.0.1:0".parse().unwrap()).unwrap();
    // One in 50 qualifies and one in 500 has the tag already: 9 writes per 500 clients.
    seed_every(&sim.backend(key), n, 50);
    sim.faults.reset_counts();
    let mut config = SpectoraConfig::new(sim.base_url(), ApiKey::new(key).unwrap());
    config.requests_per_minute = per_minute;
    let burst = config.burst();
    let http = SpectoraClient::with_clock(&config, Arc::new(SystemClock)).unwrap();

    reset_peak();
    let base = memory_kib("VmRSS:");
    let started = std::time::Instant::now();
    let record = run_nightly(Arc::new(http));
    let seconds = started.elapsed().as_secs_f64();
    let peak = memory_kib("VmHWM:");

    assert_eq!(record["status"], "succeeded", "{:#}", record["error"]);
    let counts = sim.faults.counts();
    let requests: u64 = counts.values().sum();
    let lists = counts.get("GET /v2/contacts").copied().unwrap_or(0);
    let writes = counts.get("PATCH /v2/contacts/{id}").copied().unwrap_or(0);
    assert_eq!(lists, n.div_ceil(200) as u64, "{counts:?}");
    assert_eq!(writes, (n / 50 - n / 500) as u64, "{counts:?}");
    assert_eq!(requests, lists + writes, "{counts:?}");
    let interval = 60.0 / f64::from(per_minute);
    let bound = requests.saturating_sub(u64::from(burst)) as f64 * interval;
    println!(
        "{n} clients at {per_minute} requests/min (burst {burst}): {requests} requests \
         ({lists} lists, {writes} writes) in {seconds:.1} s; rate-limit lower bound \
         {bound:.1} s ({}); resident memory {} KiB at the start, peak {} KiB \
         (+{} KiB)",
        if bound > 0.0 {
            format!("{:.0}% of it", 100.0 * seconds / bound)
        } else {
            "all within the burst".into()
        },
        base.map_or("?".into(), |k| k.to_string()),
        peak.map_or("?".into(), |k| k.to_string()),
        match (base, peak) {
            (Some(b), Some(p)) => p.saturating_sub(b).to_string(),
            _ => "?".into(),
        },
    );
    (requests, seconds, peak)
}

#[test]
#[ignore = "a benchmark: minutes of real time against a rate limit"]
fn bench_nightly_tagging_over_fifty_thousand_clients_against_a_rate_limited_simulator() {
    // A small run first, so that one-time allocations (the engine, the HTTP client's
    // pool) are not counted; then a fifth of the clients, to compare the memory.
    bench_run(1_000, 1_200);
    bench_run(10_000, 1_200);
    bench_run(50_000, 1_200);
}
