//! The tests kept in the shipped rule files pass, and a changed expectation fails with
//! a readable diff.

use std::path::Path;
use std::process::Command;

fn clientrules() -> Command {
    Command::new(env!("CARGO_BIN_EXE_clientrules"))
}

fn rules_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"))
}

#[test]
fn shipped_rules_validate() {
    let out = clientrules()
        .arg("validate")
        .arg(rules_dir())
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "validate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(": ok"), "{stdout}");
}

#[test]
fn shipped_rule_tests_pass() {
    let out = clientrules()
        .arg("test")
        .arg(rules_dir())
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "rule tests failed:\n{stdout}");
    assert!(stdout.contains("test result: ok."), "{stdout}");
    assert!(
        !stdout.contains("rules without tests"),
        "every shipped rule has tests:\n{stdout}"
    );
}

#[test]
fn a_changed_expectation_fails_with_a_diff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let original = std::fs::read_to_string(rules_dir().join("contact-form.yaml")).expect("read");
    let changed = original.replacen("tags: [website-lead]", "tags: [web-lead]", 1);
    assert_ne!(
        original, changed,
        "the shipped rule expects tags: [website-lead]"
    );
    let file = dir.path().join("contact-form.yaml");
    std::fs::write(&file, changed).expect("write");

    let out = clientrules().arg("test").arg(&file).output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a wrong expectation must fail:\n{stdout}"
    );
    assert!(
        stdout.contains("test result: FAILED. 2 passed; 1 failed"),
        "{stdout}"
    );
    assert!(stdout.contains("- tags: [\"web-lead\"]"), "{stdout}");
    assert!(stdout.contains("+ tags: [\"website-lead\"]"), "{stdout}");
}

#[test]
fn a_wrong_status_expectation_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("skip.yaml");
    std::fs::write(
        &file,
        "name: skipper\non:\n  webhook: {}\nscript: |\n  skip(\"never\");\ntests:\n  - name: runs\n    event: { body: {} }\n",
    )
    .expect("write");
    let out = clientrules().arg("test").arg(&file).output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("status: expected succeeded, found skipped"),
        "{stdout}"
    );
    assert!(stdout.contains("reason: never"), "{stdout}");
}
