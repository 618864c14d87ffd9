//! Schedules from the outside: the `schedule` preview, `validate` on a schedule that
//! never fires, a scheduled rule run by hand, and a service reporting its schedules.

// A failed unwrap is a failed test, with the value in its message.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Service, WAIT, command, data_dir, output_within, rules_dir, shipped_rules};
use serde_json::Value;

fn clientrules(args: &[&str]) -> std::process::Output {
    let mut cmd = command();
    cmd.args(args);
    output_within(cmd, WAIT)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn schedule_previews_the_shipped_nightly_rule_across_the_spring_change() {
    let rules = shipped_rules();
    let output = clientrules(&[
        "schedule",
        "repeat-clients",
        "--rules",
        rules.to_str().unwrap(),
        "--from",
        "2025-03-07T12:00:00Z",
        "--next",
        "3",
    ]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "repeat-clients: `30 2 * * *` in America/Denver (overlap: skip, catch_up: latest)",
            "  Sat 2025-03-08 02:30:00 -07:00  2025-03-08T09:30:00Z",
            "  Sun 2025-03-09 03:00:00 -06:00  2025-03-09T09:00:00Z  clocks change: 02:30:00 \
             is skipped, fires when the gap ends",
            "  Mon 2025-03-10 02:30:00 -06:00  2025-03-10T08:30:00Z",
        ]
    );
}

#[test]
fn schedule_json_lists_every_scheduled_rule() {
    let rules = rules_dir(&[
        (
            "a.yaml",
            "name: a\non:\n  schedule:\n    cron: '@hourly'\nscript: \"let x = 1;\"\n",
        ),
        (
            "b.yaml",
            "name: b\non:\n  schedule:\n    cron: '45 1 * * *'\n    timezone: Australia/Lord_Howe\nscript: \"let x = 1;\"\n",
        ),
        (
            "hook.yaml",
            "name: hook\non:\n  webhook: {}\nscript: \"let x = 1;\"\n",
        ),
    ]);
    let output = clientrules(&[
        "schedule",
        "--rules",
        rules.path().to_str().unwrap(),
        "--from",
        "2025-04-05T14:00:00Z",
        "--next",
        "2",
        "--json",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let ticks: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let summary: Vec<(&str, &str, &str)> = ticks
        .iter()
        .map(|t| {
            (
                t["rule"].as_str().unwrap(),
                t["local"].as_str().unwrap(),
                t["utc"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("a", "2025-04-05T15:00:00+00:00", "2025-04-05T15:00:00Z"),
            ("a", "2025-04-05T16:00:00+00:00", "2025-04-05T16:00:00Z"),
            // 01:45 happens twice on 6 April at Lord Howe: the first, at +11:00.
            ("b", "2025-04-06T01:45:00+11:00", "2025-04-05T14:45:00Z"),
            ("b", "2025-04-07T01:45:00+10:30", "2025-04-06T15:15:00Z"),
        ]
    );
    assert_eq!(ticks[2]["shift"], "repeated");
    assert_eq!(ticks[2]["clocks_change"], true);
    assert_eq!(ticks[3]["clocks_change"], false);

    let output = clientrules(&[
        "schedule",
        "hook",
        "--rules",
        rules.path().to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("rule hook is not a scheduled rule") && stderr.contains("a, b"),
        "{stderr}"
    );
}

#[test]
fn validate_reports_a_schedule_that_never_fires_at_its_line() {
    let rules = rules_dir(&[(
        "never.yaml",
        "name: never\non:\n  schedule:\n    cron: '0 0 30 2 *'\nscript: \"let x = 1;\"\n",
    )]);
    let output = clientrules(&["validate", rules.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("never.yaml:4:11"), "{stderr}");
    assert!(
        stderr.contains("never fires: day 30 never occurs in February"),
        "{stderr}"
    );
}

#[test]
fn a_scheduled_rule_runs_by_hand_on_a_tick_of_now() {
    let data = data_dir();
    let rules = shipped_rules();
    let output = clientrules(&[
        "run",
        "repeat-clients",
        "--dry-run",
        "--rules",
        rules.to_str().unwrap(),
        "--data",
        data.path().to_str().unwrap(),
    ]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(
        stdout.contains("rule repeat-clients: succeeded"),
        "{stdout}"
    );
    assert!(
        stdout.contains("progress: 1 pages, 0 clients seen, 0 changed"),
        "{stdout}"
    );
    assert!(stdout.contains("0 new repeat-client"), "{stdout}");
}

#[tokio::test]
async fn a_service_reports_each_scheduled_rule_with_its_next_tick() {
    let data = data_dir();
    let service = Service::start_default(&shipped_rules(), data.path());
    let body = service.get_json("/api/rules").await;
    let rules = body["rules"].as_array().unwrap();
    let nightly = rules
        .iter()
        .find(|r| r["name"] == "repeat-clients")
        .unwrap();
    let schedule = &nightly["schedule"];
    assert_eq!(schedule["cron"], "30 2 * * *");
    assert_eq!(schedule["timezone"], "America/Denver");
    assert_eq!(schedule["overlap"], "skip");
    assert_eq!(schedule["catch_up"], "latest");
    assert_eq!(schedule["skipped"]["total"], 0);
    let next_local = schedule["next_local"].as_str().unwrap();
    assert!(next_local.contains("T02:30:00-0"), "{next_local}");
    // Webhook rules have no schedule.
    let form = rules.iter().find(|r| r["name"] == "contact-form").unwrap();
    assert!(form["schedule"].is_null());
    assert!(
        service.wait_for_log("schedule started").await,
        "{}",
        service.logs()
    );
}
