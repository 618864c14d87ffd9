//! `clientrules backtest` runs the stored events of a rule through the rule as it is
//! on disk now, writes nothing, and reports where the outcome differs from the runs
//! the service recorded.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use common::{Service, WAIT, command, data_dir, list_clients, output_within, rules_dir};

/// The rule as it ran: every lead is tagged `lead`, and gets its last name.
const RECORDED: &str = r#"name: lead
on:
  webhook: {}
script: |
  let client = clients::upsert(#{ email: event.body.email, last_name: event.body.last_name });
  clients::tag(client, "lead");
"#;

fn backtest(rules: &Path, data: &Path, extra: &[&str]) -> String {
    let mut cmd = command();
    cmd.args(["backtest", "lead", "--rules"])
        .arg(rules)
        .arg("--data")
        .arg(data)
        .args(extra);
    let output = output_within(cmd, WAIT);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn a_changed_rule_is_compared_with_the_recorded_runs() {
    let rules = rules_dir(&[("lead.yaml", RECORDED)]);
    let data = data_dir();
    {
        let mut service = Service::start_default(rules.path(), data.path());
        for (email, last) in [
            ("ana@example.com", "Ruiz"),
            ("ben@example.org", "Stone"),
            ("cai@example.org", "Wu"),
            ("dee@example.com", "Park"),
        ] {
            service
                .accept_json(
                    "/hooks/lead",
                    &format!(r#"{{"email": "{email}", "last_name": "{last}"}}"#),
                )
                .await;
        }
        // A second event for a client that exists: an update, not a create.
        service
            .accept_json(
                "/hooks/lead",
                r#"{"email": "ana@example.com", "last_name": "Ruiz-Soto"}"#,
            )
            .await;
        service.wait_for_runs("rule=lead", 5).await;
        service.terminate(WAIT);
    }
    let before = list_clients(data.path());
    assert_eq!(before.len(), 4);

    // The rule unchanged: every event comes out the same.
    let out = backtest(rules.path(), data.path(), &[]);
    assert!(out.contains("against 5 stored events"), "{out}");
    assert!(out.contains("5 the same, 0 differ"), "{out}");

    // The rule as edited: .org addresses get another tag.
    let edited = RECORDED.replace(
        r#"clients::tag(client, "lead");"#,
        r#"clients::tag(client, if event.body.email.ends_with(".org") { "partner-lead" } else { "lead" });"#,
    );
    std::fs::write(rules.path().join("lead.yaml"), edited).unwrap();
    let out = backtest(rules.path(), data.path(), &[]);
    assert!(out.contains("3 the same, 2 differ"), "{out}");
    assert!(out.contains("  2 of 5 events: tags differ"), "{out}");
    // Each example shows both sides: the tag the run added, the tag the rule adds now.
    let example = out.split("\nevent ").nth(1).unwrap();
    let (recorded, now) = example.split_once("  now (succeeded):").unwrap();
    assert!(recorded.contains("recorded (succeeded):"), "{out}");
    assert!(recorded.contains("@example.org {last_name: "), "{out}");
    assert!(recorded.contains(": tags +lead"), "{out}");
    assert!(now.contains("~ client new-1: tags +partner-lead"), "{out}");

    // As data.
    let json: Value =
        serde_json::from_str(&backtest(rules.path(), data.path(), &["--json"])).unwrap();
    assert_eq!(json["events"], 5);
    assert_eq!(json["same"], 3);
    assert_eq!(json["counts"]["tags"], 2);
    let example = &json["examples"][0];
    assert!(
        example["kinds"]
            .as_array()
            .unwrap()
            .contains(&Value::from("tags")),
        "{json:#}"
    );

    // A rule that now skips .com addresses differs in status for those three events.
    let skipping = RECORDED.replace(
        "script: |\n",
        "when: '!event.body.email.ends_with(\".com\")'\nscript: |\n",
    );
    std::fs::write(rules.path().join("lead.yaml"), skipping).unwrap();
    let out = backtest(rules.path(), data.path(), &[]);
    assert!(out.contains("  3 of 5 events: status differs"), "{out}");
    assert!(out.contains("now (skipped):"), "{out}");

    // Only events of the window, and nothing written at any point.
    std::thread::sleep(Duration::from_millis(1100));
    let out = backtest(rules.path(), data.path(), &["--since", "1s"]);
    assert!(out.contains("against 0 stored events"), "{out}");
    assert!(out.contains("nothing to compare"), "{out}");
    assert_eq!(
        list_clients(data.path()),
        before,
        "a backtest writes nothing"
    );
}

#[test]
fn an_unknown_rule_is_an_error() {
    let rules = rules_dir(&[("lead.yaml", RECORDED)]);
    let data = data_dir();
    let mut cmd = command();
    cmd.args(["backtest", "nope", "--rules"])
        .arg(rules.path())
        .arg("--data")
        .arg(data.path());
    let output = output_within(cmd, WAIT);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no rule named nope"), "{stderr}");
}
