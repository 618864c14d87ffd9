//! What `clientrules validate` and `clientrules run` print for the mistakes people make
//! in rule files: the file, line and column, the offending line with a marker under
//! the offending text, what was expected, and a suggestion where one helps.

#![allow(clippy::unwrap_used)]

mod common;

use common::{WAIT, command, output_within, rules_dir, validate};

/// Validates one rule file and returns what was printed on standard error; the
/// command must fail.
fn errors_of(text: &str) -> String {
    let rules = rules_dir(&[("rule.yaml", text)]);
    let output = validate(rules.path());
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(1),
        "validate must fail:\n{stderr}"
    );
    stderr
}

/// Asserts that the report shows `source` (a line of the file) with carets under
/// `marked`, the text at the reported column.
fn assert_marked(report: &str, source: &str, marked: &str) {
    let lines: Vec<&str> = report.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.split_once("│ ").is_some_and(|(_, rest)| rest == source))
        .unwrap_or_else(|| panic!("the report does not show the line {source:?}:\n{report}"));
    let marker_line = lines[at + 1];
    let (_, marks) = marker_line
        .split_once("│ ")
        .unwrap_or_else(|| panic!("no marker under {source:?}:\n{report}"));
    let start = marks
        .find('^')
        .unwrap_or_else(|| panic!("no ^ under {source:?}:\n{report}"));
    let width = marks[start..].chars().take_while(|c| *c == '^').count();
    let expected_start = source.find(marked).unwrap();
    assert_eq!(
        (start, width),
        (expected_start, marked.chars().count()),
        "the marker is not under {marked:?}:\n{report}"
    );
}

#[test]
fn bad_indentation_points_at_the_line_and_compares_columns() {
    let report = errors_of(
        "name: lead\non:\n  webhook:\n    path: /a\n   respond: {}\nscript: \"let x = 1;\"\n",
    );
    assert!(report.contains("error: YAML syntax error"), "{report}");
    assert!(report.contains("rule.yaml:5:4"), "{report}");
    assert_marked(&report, "   respond: {}", "respond");
    assert!(
        report.contains("line 5 is indented by 3 spaces, but the lines above use 0, 2, 4"),
        "{report}"
    );
}

#[test]
fn a_tab_says_to_indent_with_spaces() {
    let report = errors_of("name: lead\non:\n\twebhook: {}\nscript: \"let x = 1;\"\n");
    assert!(report.contains("rule.yaml:3:"), "{report}");
    assert!(report.contains("tabs disallowed"), "{report}");
    assert!(
        report.contains("help: indent with spaces; YAML does not allow tabs"),
        "{report}"
    );
}

#[test]
fn an_unknown_key_suggests_the_nearest_valid_one() {
    let report = errors_of("name: lead\non:\n  webhook: {}\nscirpt: |\n  let x = 1;\n");
    assert!(report.contains("error: unknown key `scirpt`"), "{report}");
    assert!(report.contains("rule.yaml:4:1"), "{report}");
    assert_marked(&report, "scirpt: |", "scirpt");
    assert!(report.contains("help: did you mean `script`?"), "{report}");
}

#[test]
fn an_unknown_nested_key_names_its_place_and_the_keys_there() {
    let report = errors_of("name: lead\non:\n  webhook:\n    verfy: {}\nscript: \"let x = 1;\"\n");
    assert!(
        report.contains("error: unknown key `verfy` in `on.webhook`"),
        "{report}"
    );
    assert_marked(&report, "    verfy: {}", "verfy");
    assert!(report.contains("did you mean `verify`?"), "{report}");
    assert!(
        report.contains("valid keys here: path, verify, dedupe, respond"),
        "{report}"
    );
}

#[test]
fn a_wrong_type_says_what_was_expected_and_found() {
    let report = errors_of(
        "name: lead\non:\n  webhook: {}\nlimits:\n  max_api_calls: lots\nscript: \"let x = 1;\"\n",
    );
    assert!(
        report.contains(
            "error: expected a whole number in `limits.max_api_calls`, found string \"lots\""
        ),
        "{report}"
    );
    assert_marked(&report, "  max_api_calls: lots", "lots");
}

#[test]
fn a_bad_duration_shows_the_forms_that_work() {
    let report = errors_of(
        "name: lead\non:\n  webhook: {}\nlimits:\n  timeout: ten seconds\nscript: \"let x = 1;\"\n",
    );
    assert!(
        report.contains("expected a duration such as `10s`, `500ms` or `5m`, found `ten seconds`"),
        "{report}"
    );
    assert!(report.contains("rule.yaml:5:12"), "{report}");
}

#[test]
fn a_script_syntax_error_is_shown_at_its_place_in_the_yaml_file() {
    let report =
        errors_of("name: lead\non:\n  webhook: {}\nscript: |\n  let a = 1;\n  let c = ;\n");
    assert!(report.contains("error: script error"), "{report}");
    assert!(report.contains("rule.yaml:6:11"), "{report}");
    assert_marked(&report, "  let c = ;", ";");
    assert!(report.contains("rule: lead"), "{report}");
}

#[test]
fn an_unknown_module_function_suggests_the_right_one() {
    // A call on its own line (a statement) is checked as well as one in an expression.
    let report = errors_of(
        "name: lead\non:\n  webhook: {}\nscript: |\n  let c = clients::upsret(#{});\n  clients::tgg(c, \"x\");\n  let n = text::split_nam(\"Jane Baker\");\n",
    );
    assert!(
        report.contains("error: unknown function `clients::upsret`"),
        "{report}"
    );
    assert_marked(&report, "  let c = clients::upsret(#{});", "upsret");
    assert!(
        report.contains("did you mean `clients::upsert`?"),
        "{report}"
    );
    assert!(
        report.contains("error: unknown function `clients::tgg`"),
        "{report}"
    );
    assert!(report.contains("did you mean `clients::tag`?"), "{report}");
    assert!(
        report.contains("did you mean `text::split_name`?"),
        "{report}"
    );
    assert!(report.contains("3 errors"), "{report}");
}

#[test]
fn an_unknown_module_lists_the_modules() {
    let report = errors_of("name: lead\non:\n  webhook: {}\nscript: |\n  files::read(\"x\");\n");
    assert!(report.contains("unknown module `files`"), "{report}");
    assert!(
        report.contains("clients, log, json, text and time"),
        "{report}"
    );
}

#[test]
fn an_unset_environment_variable_is_named_with_a_fix() {
    let report = errors_of(
        "name: lead\non:\n  webhook:\n    verify:\n      hmac:\n        secret: ${CLIENTRULES_TEST_UNSET_SECRET}\n        header: X-Sig\nscript: \"let x = 1;\"\n",
    );
    assert!(
        report.contains("error: environment variable `CLIENTRULES_TEST_UNSET_SECRET` is not set"),
        "{report}"
    );
    assert_marked(
        &report,
        "        secret: ${CLIENTRULES_TEST_UNSET_SECRET}",
        "${CLIENTRULES_TEST_UNSET_SECRET}",
    );
    assert!(
        report.contains("help: set CLIENTRULES_TEST_UNSET_SECRET in the service's environment"),
        "{report}"
    );
}

#[test]
fn a_duplicate_rule_name_points_at_the_second_file() {
    let rule = |path: &str| {
        format!("name: lead\non:\n  webhook:\n    path: {path}\nscript: \"let x = 1;\"\n")
    };
    let rules = rules_dir(&[("a.yaml", &rule("/hooks/a")), ("b.yaml", &rule("/hooks/b"))]);
    let output = validate(rules.path());
    let report = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(
        report.contains("error: duplicate rule name `lead`"),
        "{report}"
    );
    assert!(report.contains("a.yaml already defines it"), "{report}");
    assert!(report.contains("b.yaml:1:7"), "{report}");
    assert_marked(&report, "name: lead", "lead");
}

#[test]
fn a_duplicate_key_names_the_line_of_the_first() {
    let report = errors_of(
        "name: lead\non:\n  webhook: {}\nvars:\n  tag: a\n  tag: b\nscript: \"let x = 1;\"\n",
    );
    assert!(
        report.contains("error: duplicate key `tag`: it is already set on line 5"),
        "{report}"
    );
    assert_marked(&report, "  tag: b", "tag");
}

#[test]
fn a_missing_key_is_named() {
    let report = errors_of("name: lead\nscript: \"let x = 1;\"\n");
    assert!(report.contains("missing key `on`"), "{report}");
}

/// A schedule with a bad cron expression or an unknown time zone never loads, and the
/// error points into the `schedule` mapping: at the key while this version refuses
/// schedules, at the offending value once it reads them.
#[test]
fn a_bad_cron_or_time_zone_does_not_load_and_is_positioned() {
    let report = errors_of(
        "name: nightly\non:\n  schedule:\n    cron: \"61 * * * *\"\nscript: \"let x = 1;\"\n",
    );
    assert!(
        report.contains("rule.yaml:3:") || report.contains("rule.yaml:4:"),
        "{report}"
    );
    let report = errors_of(
        "name: nightly\non:\n  schedule:\n    cron: \"0 2 * * *\"\n    timezone: Mars/Olympus\nscript: \"let x = 1;\"\n",
    );
    assert!(
        report.contains("rule.yaml:3:") || report.contains("rule.yaml:5:"),
        "{report}"
    );
}

#[test]
fn a_runtime_error_of_run_shows_the_script_line() {
    let rules = rules_dir(&[(
        "lead.yaml",
        "name: lead\non:\n  webhook: {}\nscript: |\n  let client = clients::upsert(#{ email: event.body.email, first_name: \"Jo\" });\n  clients::update(client, #{ email: \"other@example.com\" });\n",
    )]);
    let data = tempfile::tempdir().unwrap();
    let event = data.path().join("event.yaml");
    std::fs::write(&event, "body: { email: jo@example.com }\n").unwrap();
    let mut cmd = command();
    cmd.args(["run", "lead", "--dry-run", "--event"])
        .arg(&event)
        .arg("--rules")
        .arg(rules.path())
        .arg("--data")
        .arg(data.path().join("data"));
    let output = output_within(cmd, WAIT);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(stdout.contains("rule lead: failed"), "{stdout}");
    assert!(
        stdout.contains("error: clients::update: the email of a client cannot be changed"),
        "{stdout}"
    );
    assert!(stdout.contains("lead.yaml:6:12"), "{stdout}");
    assert_marked(
        &stdout,
        "  clients::update(client, #{ email: \"other@example.com\" });",
        "update",
    );

    // The same position is in the run record.
    let mut cmd = command();
    cmd.args(["run", "lead", "--dry-run", "--json", "--event"])
        .arg(&event)
        .arg("--rules")
        .arg(rules.path())
        .arg("--data")
        .arg(data.path().join("data"));
    let output = output_within(cmd, WAIT);
    let record: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(record["error"]["line"], 6, "{record:#}");
    assert_eq!(record["error"]["column"], 12, "{record:#}");
}

#[test]
fn the_settings_file_is_read_in_the_working_folder_and_the_environment_wins_over_it() {
    let broken = rules_dir(&[("rule.yaml", "name: broken\non:\n  webhook: {}\n")]);
    let good = rules_dir(&[(
        "rule.yaml",
        "name: good\non:\n  webhook: {}\nscript: \"let x = 1;\"\n",
    )]);
    let work = tempfile::tempdir().unwrap();
    std::fs::write(
        work.path().join("clientrules.yaml"),
        format!("rules: {}\n", broken.path().display()),
    )
    .unwrap();
    let mut from_file = command();
    from_file.current_dir(work.path()).arg("validate");
    let output = output_within(from_file, WAIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("missing key `script`"), "{stderr}");

    let mut from_env = command();
    from_env
        .current_dir(work.path())
        .arg("validate")
        .env("CLIENTRULES_RULES", good.path());
    let output = output_within(from_env, WAIT);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // A mistake in the file stops every command with its line.
    std::fs::write(
        work.path().join("clientrules.yaml"),
        "rules: ./r\nworkers: many\n",
    )
    .unwrap();
    let mut broken_file = command();
    broken_file.current_dir(work.path()).arg("validate");
    let output = output_within(broken_file, WAIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("clientrules.yaml line 2: `workers`: invalid value \"many\""),
        "{stderr}"
    );
}
