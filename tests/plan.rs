//! `clientrules run --dry-run` prints the writes a rule would make as a diff a person
//! can read, and as data with `--json`, and writes nothing.

#![allow(clippy::unwrap_used)]

mod common;

use common::{WAIT, command, data_dir, list_clients, output_within, rules_dir};
use serde_json::Value;

const RULE: &str = r#"name: lead
on:
  webhook: {}
script: |
  let client = clients::upsert(#{
      email: event.body.email,
      first_name: event.body.first_name,
      last_name: event.body.last_name,
  });
  clients::tag(client, "lead");
"#;

fn write_event(dir: &std::path::Path, name: &str, yaml: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    path
}

fn run(
    rules: &std::path::Path,
    data: &std::path::Path,
    event: &std::path::Path,
    extra: &[&str],
) -> (bool, String) {
    let mut cmd = command();
    cmd.args(["run", "lead", "--event"])
        .arg(event)
        .arg("--rules")
        .arg(rules)
        .arg("--data")
        .arg(data)
        .args(extra);
    let out = output_within(cmd, WAIT);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().is_empty() || out.status.success(), "{stderr}");
    (out.status.success(), stdout)
}

#[test]
fn a_dry_run_prints_the_plan_as_a_diff_and_writes_nothing() {
    let rules = rules_dir(&[("lead.yaml", RULE)]);
    let data = data_dir();
    let events = tempfile::tempdir().unwrap();
    let first = write_event(
        events.path(),
        "first.yaml",
        "body: { email: jane@example.com, first_name: Jane }\n",
    );

    // A dry run on an empty store plans a create and a tag.
    let (ok, stdout) = run(rules.path(), data.path(), &first, &["--dry-run"]);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("dry run: nothing was written"), "{stdout}");
    assert!(
        stdout.contains("+ create client jane@example.com {first_name: Jane}"),
        "{stdout}"
    );
    assert!(stdout.contains("~ client new-1: tags +lead"), "{stdout}");
    assert!(
        list_clients(data.path()).is_empty(),
        "a dry run writes nothing"
    );

    // A live run creates the client; a dry run of a second event plans only the
    // differences, found through an email written differently.
    let (ok, _) = run(rules.path(), data.path(), &first, &[]);
    assert!(ok);
    let clients = list_clients(data.path());
    assert_eq!(clients.len(), 1);
    let id = clients[0]["id"].as_str().unwrap().to_owned();
    let second = write_event(
        events.path(),
        "second.yaml",
        "body: { email: \" Jane@Example.COM\", first_name: Jane, last_name: Baker }\n",
    );
    let (ok, stdout) = run(rules.path(), data.path(), &second, &["--dry-run"]);
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains(&format!("~ client {id}: last_name \"\" → \"Baker\"")),
        "{stdout}"
    );
    assert!(!stdout.contains("+ create"), "{stdout}");
    assert!(
        !stdout.contains("tags +lead"),
        "the tag is already there: {stdout}"
    );
    assert_eq!(list_clients(data.path())[0]["last_name"], Value::Null);
}

#[test]
fn a_dry_run_with_json_gives_the_plan_as_data() {
    let rules = rules_dir(&[("lead.yaml", RULE)]);
    let data = data_dir();
    let events = tempfile::tempdir().unwrap();
    let event = write_event(
        events.path(),
        "event.json",
        r#"{"body": {"email": "ana@example.com", "first_name": "Ana"}}"#,
    );
    let (ok, stdout) = run(rules.path(), data.path(), &event, &["--dry-run", "--json"]);
    assert!(ok, "{stdout}");
    let record: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(record["mode"], "plan");
    assert_eq!(record["status"], "succeeded");
    let plan = record["plan"].as_array().unwrap();
    assert_eq!(plan.len(), 2, "{record:#}");
    assert_eq!(plan[0]["kind"], "created");
    assert_eq!(plan[0]["email"], "ana@example.com");
    let fields: Vec<&str> = plan[0]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"first_name"), "{fields:?}");
    assert_eq!(plan[1]["kind"], "updated");
    assert_eq!(plan[1]["fields"][0]["field"], "tags");
    assert_eq!(plan[1]["fields"][0]["after"], serde_json::json!(["lead"]));
    assert_eq!(
        record["diff"][0],
        "+ create client ana@example.com {first_name: Ana}"
    );
    assert!(list_clients(data.path()).is_empty());
}
