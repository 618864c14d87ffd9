//! `serve` reloads the rules folder while it runs: a broken edit leaves the last good
//! version serving, a fix swaps in the new one, a deleted file removes its rule, SIGHUP
//! reloads too, and events posted during the edits are each processed once.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{Service, WAIT, accepted_event_id, client_with_email, data_dir, rules_dir, tags_of};

/// A version of the rule: it tags the client of `event.body.email` with `tag` and says
/// its version in its description.
fn version(tag: &str) -> String {
    format!(
        "name: lead\ndescription: {tag}\non:\n  webhook:\n    path: /hooks/lead\nscript: |\n  let client = clients::upsert(#{{ email: event.body.email }});\n  clients::tag(client, \"{tag}\");\n"
    )
}

/// The same rule with a syntax error on line 7 of the file.
const BROKEN: &str = "name: lead\ndescription: broken\non:\n  webhook:\n    path: /hooks/lead\nscript: |\n  let client = ;\n";

fn write(dir: &Path, text: &str) {
    // Written beside and renamed into place, as editors save.
    let temp = dir.join(".lead.yaml.tmp");
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, dir.join("lead.yaml")).unwrap();
}

/// The entry of rule `lead` in `/api/rules`, or `Null` when it is not loaded.
async fn lead(service: &Service) -> Value {
    let rules = service.get_json("/api/rules").await;
    rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "lead")
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until the `lead` entry satisfies `check`, and returns it.
async fn wait_for_lead(service: &Service, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let entry = lead(service).await;
        if check(&entry) {
            return entry;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for rule lead to be {what}; it is {entry:#}\n{}",
            service.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(service: &Service, email: &str) -> String {
    service
        .accept_json("/hooks/lead", &format!(r#"{{"email": "{email}"}}"#))
        .await
}

fn tags_for(service: &Service, email: &str) -> Vec<String> {
    tags_of(client_with_email(&service.clients(), email))
}

#[tokio::test]
async fn a_broken_edit_keeps_the_old_version_and_a_fix_swaps_in_the_new_one() {
    let rules = rules_dir(&[("lead.yaml", &version("v1"))]);
    let data = data_dir();
    let service = Service::start_default(rules.path(), data.path());
    wait_for_lead(&service, "v1", |r| r["description"] == "v1").await;

    post(&service, "a@example.com").await;
    service.wait_for_runs("rule=lead", 1).await;
    assert_eq!(tags_for(&service, "a@example.com"), ["v1"]);

    // A broken save: v1 keeps serving, and the rule's status shows the error with its
    // position.
    write(rules.path(), BROKEN);
    let entry = wait_for_lead(&service, "stale", |r| r["status"] == "stale").await;
    assert_eq!(entry["description"], "v1", "{entry:#}");
    let errors = entry["file_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{entry:#}");
    let error = errors[0].as_str().unwrap();
    assert!(
        error.contains("lead.yaml:7:16: error in rule lead: script error"),
        "{error}"
    );
    post(&service, "b@example.com").await;
    service.wait_for_runs("rule=lead", 2).await;
    assert_eq!(tags_for(&service, "b@example.com"), ["v1"]);

    // The same broken text saved again changes no byte: no reload, no second log line.
    let reloads = |s: &Service| s.logs().matches("rules reloaded").count();
    let before = reloads(&service);
    write(rules.path(), BROKEN);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(reloads(&service), before, "{}", service.logs());
    let logged = service
        .logs()
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("script error"))
        .count();
    assert_eq!(logged, 1, "the error is logged once:\n{}", service.logs());
    assert!(
        service
            .logs()
            .contains("the last good version of the rule keeps running"),
        "{}",
        service.logs()
    );

    // The fix swaps in the new version.
    write(rules.path(), &version("v2"));
    let entry = wait_for_lead(&service, "v2", |r| r["description"] == "v2").await;
    assert_eq!(entry["status"], "ok", "{entry:#}");
    assert_eq!(entry["file_errors"], serde_json::json!([]), "{entry:#}");
    post(&service, "c@example.com").await;
    service.wait_for_runs("rule=lead", 3).await;
    assert_eq!(tags_for(&service, "c@example.com"), ["v2"]);

    // A deleted file removes its rule, and its path with it.
    std::fs::remove_file(rules.path().join("lead.yaml")).unwrap();
    wait_for_lead(&service, "unloaded", Value::is_null).await;
    let response = service
        .post_json("/hooks/lead", r#"{"email": "d@example.com"}"#)
        .await;
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn events_posted_during_edits_are_each_processed_once() {
    let rules = rules_dir(&[("lead.yaml", &version("v1"))]);
    let data = data_dir();
    let service = Service::start_default(rules.path(), data.path());
    wait_for_lead(&service, "v1", |r| r["description"] == "v1").await;

    // Deliveries go on, one every 20 ms, while the file is broken and fixed in turn.
    const EVENTS: usize = 60;
    let poster = {
        let http = service.http.clone();
        let url = service.url("/hooks/lead");
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..EVENTS {
                let response = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"email": "person{i}@example.com"}}"#))
                    .send()
                    .await
                    .unwrap();
                ids.push(accepted_event_id(response).await);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ids
        })
    };
    for text in [BROKEN, &version("v2"), BROKEN, &version("v3")] {
        tokio::time::sleep(Duration::from_millis(250)).await;
        write(rules.path(), text);
    }
    let posted: Vec<String> = poster.await.unwrap();
    wait_for_lead(&service, "v3", |r| r["description"] == "v3").await;

    service.wait_for_runs("rule=lead&limit=1000", EVENTS).await;
    // Give a second run of any event the time to show up before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let runs = service.runs("rule=lead&limit=1000").await;
    assert_eq!(runs.len(), EVENTS, "one run per event");
    let ran: HashSet<&str> = runs
        .iter()
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    let sent: HashSet<&str> = posted.iter().map(String::as_str).collect();
    assert_eq!(ran, sent, "every posted event ran, and no other");
    assert!(runs.iter().all(|r| r["status"] == "succeeded"), "{runs:#?}");
    assert_eq!(service.clients().len(), EVENTS);
}

#[tokio::test]
async fn sighup_reloads_when_watching_is_off() {
    let rules = rules_dir(&[("lead.yaml", &version("v1"))]);
    let data = data_dir();
    let service = Service::start(rules.path(), data.path(), &["--watch-rules", "false"], &[]);
    wait_for_lead(&service, "v1", |r| r["description"] == "v1").await;

    write(rules.path(), &version("v2"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        lead(&service).await["description"],
        "v1",
        "no watcher, no reload"
    );

    let status = std::process::Command::new("kill")
        .args(["-HUP", &service.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for_lead(&service, "v2", |r| r["description"] == "v2").await;
    post(&service, "a@example.com").await;
    service.wait_for_runs("rule=lead", 1).await;
    assert_eq!(tags_for(&service, "a@example.com"), ["v2"]);
}
