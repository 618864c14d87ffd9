//! Each example payload of the newer shipped rules, run through its rule with
//! `clientrules run --body`, becomes the client that `examples/README.md` describes.

#![allow(clippy::unwrap_used)]

mod common;

use common::{
    WAIT, client_with_email, command, list_clients, manifest_dir, output_within, shipped_rules,
    tags_of,
};
use serde_json::Value;

/// Runs a shipped rule on an example file as a delivered body; returns stdout.
fn run_example(data: &std::path::Path, rule: &str, example: &str, content_type: &str) -> String {
    let mut cmd = command();
    cmd.args(["run", rule, "--body"])
        .arg(manifest_dir().join("examples").join(example))
        .args(["--content-type", content_type])
        .arg("--rules")
        .arg(shipped_rules())
        .arg("--data")
        .arg(data);
    let output = output_within(cmd, WAIT);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{rule} on {example}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("rule {rule}: succeeded")),
        "{stdout}"
    );
    stdout
}

fn assert_fields(client: &Value, fields: &[(&str, &str)]) {
    for (key, value) in fields {
        assert_eq!(client[*key].as_str(), Some(*value), "{key} of {client:#}");
    }
}

#[test]
fn each_form_service_example_becomes_its_client() {
    let data = tempfile::tempdir().unwrap();
    let json = "application/json";
    let out = run_example(data.path(), "gravity-forms", "gravity-forms.json", json);
    assert!(out.contains("entry 1187 of form 4"), "{out}");
    run_example(data.path(), "webflow", "webflow.json", json);
    run_example(data.path(), "tally", "tally.json", json);
    let out = run_example(data.path(), "calendly", "calendly.json", json);
    assert!(
        out.contains("Home Inspection booked for Thursday March 20, 2025 at 10:00 AM MDT"),
        "{out}"
    );

    let clients = list_clients(data.path());
    let ellen = client_with_email(&clients, "ellen.marsh@example.net");
    assert_fields(
        ellen,
        &[
            ("first_name", "Ellen"),
            ("last_name", "Marsh"),
            ("phone", "+17205550147"),
        ],
    );
    assert_eq!(tags_of(ellen), ["gravity-forms-lead"]);
    let priya = client_with_email(&clients, "priya.raman@example.com");
    assert_fields(
        priya,
        &[
            ("first_name", "Priya"),
            ("last_name", "Raman"),
            ("phone", "+13035550164"),
        ],
    );
    assert_eq!(tags_of(priya), ["webflow-lead"]);
    let tomas = client_with_email(&clients, "tomas.herrera@example.org");
    assert_fields(
        tomas,
        &[
            ("first_name", "Tomás"),
            ("last_name", "Herrera"),
            ("phone", "+17205550182"),
        ],
    );
    assert_eq!(tags_of(tomas), ["tally-lead"]);
    let grace = client_with_email(&clients, "grace.okafor@example.com");
    assert_fields(
        grace,
        &[
            ("first_name", "Grace"),
            ("last_name", "Okafor"),
            ("phone", "+13035550175"),
        ],
    );
    assert_eq!(tags_of(grace), ["calendly-booking"]);
}

#[test]
fn a_full_name_fills_in_and_a_thin_notice_tidies_the_client() {
    let data = tempfile::tempdir().unwrap();
    let form = "application/x-www-form-urlencoded";
    let out = run_example(
        data.path(),
        "fill-missing-names",
        "fill-missing-names.txt",
        form,
    );
    assert!(
        out.contains("+ create client jane.baker@example.com {first_name: Jane, last_name: Baker}"),
        "{out}"
    );
    let clients = list_clients(data.path());
    let jane = client_with_email(&clients, "jane.baker@example.com");
    assert_eq!(jane["id"], "1", "the notice example names client 1");

    // The notice finds the client by id; a tidy client needs nothing and gets the
    // needs-email tag only when it has no email.
    let out = run_example(
        data.path(),
        "spectora-contact-cleanup",
        "spectora-contact.json",
        "application/json",
    );
    assert!(
        out.contains("changes: none"),
        "a tidy client is left alone: {out}"
    );
    let clients = list_clients(data.path());
    let jane = client_with_email(&clients, "jane.baker@example.com");
    assert_fields(jane, &[("first_name", "Jane"), ("last_name", "Baker")]);
    assert!(tags_of(jane).is_empty(), "{jane:#}");
}
