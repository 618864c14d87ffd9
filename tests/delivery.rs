//! Delivery guarantees end to end: duplicates answered without a second run, transient
//! API failures retried until they pass, writes that succeeded never sent twice, dead
//! letters, and replays from the command line and the admin API.

// A failed unwrap is a failed test, with the value in its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use clientrules::sim::{self, Fault, SimConfig, SimHandle};
use serde_json::Value;

use common::{Service, data_dir, rules_dir};

const KEY: &str = "delivery-test-key-77";

fn simulator() -> SimHandle {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    sim::spawn(SimConfig::new([KEY]), addr).unwrap()
}

/// `serve` on the simulator, with one try per request so that every failure reaches
/// the job's own retry policy.
fn serve_on(sim: &SimHandle, rules: &std::path::Path, data: &std::path::Path) -> Service {
    let base = sim.base_url();
    Service::start(
        rules,
        data,
        &[],
        &[
            ("SPECTORA_API_KEY", KEY),
            ("SPECTORA_BASE_URL", &base),
            ("CLIENTRULES_SPECTORA_ATTEMPTS", "1"),
        ],
    )
}

fn unavailable() -> Fault {
    Fault::Status {
        status: 503,
        retry_after: None,
    }
}

fn sim_count(sim: &SimHandle, name: &str) -> u64 {
    sim.faults.counts().get(name).copied().unwrap_or(0)
}

fn sim_clients(sim: &SimHandle) -> Vec<clientrules::clients::Client> {
    use clientrules::clients::{Backend, ListQuery};
    sim.backend(KEY)
        .list(&ListQuery::first_page())
        .unwrap()
        .clients
}

/// Runs oldest first.
fn by_attempt(mut runs: Vec<Value>) -> Vec<Value> {
    runs.sort_by_key(|r| (r["job_id"].as_i64(), r["attempt"].as_i64()));
    runs
}

const DEDUPED: &str = r#"name: deduped
on:
  webhook:
    dedupe: event.headers["x-delivery-id"]
script: |
  clients::upsert(#{ email: event.body.email, first_name: "Dee" });
"#;

async fn post_with_id(service: &Service, id: &str, email: &str) -> reqwest::Response {
    service
        .http
        .post(service.url("/hooks/deduped"))
        .header("content-type", "application/json")
        .header("X-Delivery-Id", id)
        .body(format!(r#"{{"email": "{email}"}}"#))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_redelivery_with_a_seen_key_is_answered_as_a_duplicate_and_runs_nothing() {
    let rules = rules_dir(&[("deduped.yaml", DEDUPED)]);
    let data = data_dir();
    let service = Service::start_default(rules.path(), data.path());

    let first = post_with_id(&service, "dlv-1", "dee@example.com").await;
    assert_eq!(first.status(), 202, "{}", service.logs());
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["duplicate"], false);

    let again = post_with_id(&service, "dlv-1", "dee@example.com").await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["event_id"], first["event_id"]);

    let other = post_with_id(&service, "dlv-2", "dee2@example.com").await;
    assert_eq!(other.status(), 202, "{}", service.logs());

    let runs = service.wait_for_runs("rule=deduped", 2).await;
    // Give a wrongly queued duplicate the time to run, then count again.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let runs_after = service.runs("rule=deduped").await;
    assert_eq!(runs_after.len(), 2, "{runs:#?}");
    assert_eq!(service.events().await.len(), 2);
}

const RETRIED: &str = r#"name: retried
on:
  webhook: {}
script: |
  clients::upsert(#{ email: event.body.email, first_name: "Ray" });
retry:
  attempts: 5
  backoff: 100ms
"#;

#[tokio::test]
async fn an_api_that_fails_twice_then_succeeds_gives_one_client_and_three_runs() {
    let sim = simulator();
    let rules = rules_dir(&[("retried.yaml", RETRIED)]);
    let data = data_dir();
    let service = serve_on(&sim, rules.path(), data.path());
    sim.faults.push([unavailable(), unavailable()]);

    service
        .accept_json("/hooks/retried", r#"{"email": "ray@example.com"}"#)
        .await;
    let runs = by_attempt(service.wait_for_runs("rule=retried", 3).await);
    let statuses: Vec<&str> = runs.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, vec!["failed", "failed", "succeeded"], "{runs:#?}");
    assert_eq!(runs[0]["next"]["state"], "retry", "{:#}", runs[0]);
    assert!(
        runs[0]["error"].to_string().contains("503"),
        "{:#}",
        runs[0]
    );
    let clients = sim_clients(&sim);
    assert_eq!(clients.len(), 1, "{clients:#?}");
    assert_eq!(clients[0].str_attr("email"), Some("ray@example.com"));
}

const TWO_WRITES: &str = r#"name: two-writes
on:
  webhook: {}
script: |
  let client = clients::create(#{ email: event.body.email, first_name: "Jo" });
  clients::update(client, #{ notes: "second write" });
retry:
  attempts: 3
  backoff: 100ms
"#;

#[tokio::test]
async fn a_retried_job_does_not_repeat_a_write_that_succeeded() {
    let sim = simulator();
    let rules = rules_dir(&[("two-writes.yaml", TWO_WRITES)]);
    let data = data_dir();
    let service = serve_on(&sim, rules.path(), data.path());
    // The create goes through; the update after it fails once.
    sim.faults.push([Fault::Pass, unavailable()]);

    service
        .accept_json("/hooks/two-writes", r#"{"email": "jo@example.com"}"#)
        .await;
    let runs = by_attempt(service.wait_for_runs("rule=two-writes", 2).await);
    assert_eq!(runs[0]["status"], "failed", "{runs:#?}");
    assert_eq!(runs[1]["status"], "succeeded", "{runs:#?}");
    assert_eq!(
        sim_count(&sim, "POST /v2/contacts"),
        1,
        "{:?}",
        sim.faults.counts()
    );
    let clients = sim_clients(&sim);
    assert_eq!(clients.len(), 1, "{clients:#?}");
    assert_eq!(clients[0].str_attr("notes"), Some("second write"));
}

const FRAGILE: &str = r#"name: fragile
on:
  webhook: {}
script: |
  clients::upsert(#{ email: event.body.email, first_name: "Fay" });
retry:
  attempts: 2
  backoff: 100ms
"#;

#[tokio::test]
async fn dead_letters_are_replayed_from_the_cli_and_the_admin_api() {
    let sim = simulator();
    let rules = rules_dir(&[("fragile.yaml", FRAGILE)]);
    let data = data_dir();
    let service = serve_on(&sim, rules.path(), data.path());
    sim.faults.push([unavailable(), unavailable()]);

    let event = service
        .accept_json("/hooks/fragile", r#"{"email": "fay@example.com"}"#)
        .await;
    let runs = by_attempt(service.wait_for_runs("rule=fragile", 2).await);
    assert_eq!(runs[1]["status"], "failed");
    assert_eq!(runs[1]["next"]["state"], "dead", "{:#}", runs[1]);
    assert!(sim_clients(&sim).is_empty());

    // The API is back: the dead letter is replayed from the command line, while the
    // service runs, and the service picks it up.
    let mut replay = common::command();
    replay
        .args(["replay", "--dead", "--rule", "fragile", "--data"])
        .arg(data.path())
        .args(["--rules"])
        .arg(rules.path());
    let output = common::output_within(replay, common::WAIT);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.starts_with("queued 1 job"), "{stdout}");
    let runs = by_attempt(service.wait_for_runs("rule=fragile", 3).await);
    let replayed = &runs[2];
    assert_eq!(replayed["status"], "succeeded", "{replayed:#}");
    assert_eq!(replayed["event_id"].as_str(), Some(event.as_str()));
    assert!(replayed["replay_of"].as_i64().is_some(), "{replayed:#}");
    assert_eq!(sim_clients(&sim).len(), 1);

    // Nothing is dead any more.
    let mut again = common::command();
    again
        .args(["replay", "--dead", "--rule", "fragile", "--data"])
        .arg(data.path())
        .arg("--rules")
        .arg(rules.path());
    let output = common::output_within(again, common::WAIT);
    assert!(String::from_utf8_lossy(&output.stdout).contains("no dead letters"));

    // Any event can be run again through the admin API; the upsert changes nothing.
    let response = service
        .http
        .post(service.url(&format!("/api/events/{event}/replay")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let runs = service.wait_for_runs("rule=fragile", 4).await;
    assert!(
        runs.iter()
            .any(|r| r["status"] == "succeeded" && r["changes"] == serde_json::json!([])),
        "{runs:#?}"
    );
    assert_eq!(sim_clients(&sim).len(), 1);

    // A rule that is not loaded cannot run anything again.
    let mut nope = common::command();
    nope.args(["replay", &event, "--rule", "nope", "--data"])
        .arg(data.path())
        .arg("--rules")
        .arg(rules.path());
    let output = common::output_within(nope, common::WAIT);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no rule named nope"));

    // An unknown event is a 404 for the API and an error for the command line.
    let response = service
        .http
        .post(service.url("/api/events/no-such-event/replay"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let mut unknown = common::command();
    unknown
        .args(["replay", "no-such-event", "--data"])
        .arg(data.path());
    let output = common::output_within(unknown, common::WAIT);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no event no-such-event"));
}
