//! `clientrules schema` prints a JSON Schema that every shipped rule file satisfies and
//! that refuses the mistakes an editor should underline.

#![allow(clippy::unwrap_used)]

mod common;

use common::{WAIT, command, output_within, shipped_rules};
use serde_json::Value;

fn schema() -> Value {
    let mut cmd = command();
    cmd.arg("schema");
    let output = output_within(cmd, WAIT);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap()
}

/// The messages of every schema violation of a document.
fn violations(validator: &jsonschema::Validator, document: &Value) -> Vec<String> {
    validator
        .iter_errors(document)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn every_shipped_rule_satisfies_the_schema() {
    let schema = schema();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(shipped_rules()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let document = yaml(&std::fs::read_to_string(&path).unwrap());
        let problems = violations(&validator, &document);
        assert!(problems.is_empty(), "{}: {problems:#?}", path.display());
        checked += 1;
    }
    assert!(checked >= 3, "the shipped rules were found");
}

#[test]
fn the_schema_refuses_what_the_loader_refuses() {
    let validator = jsonschema::validator_for(&schema()).unwrap();
    let good = "name: lead\non:\n  webhook:\n    path: /hooks/lead\nscript: |\n  let x = 1;\n";
    assert!(validator.is_valid(&yaml(good)));
    for size in ["64MiB", "512KiB", "1GiB", "'1048576'", "2 GB"] {
        let limited = format!("{good}limits:\n  max_memory: {size}\n");
        let problems = violations(&validator, &yaml(&limited));
        assert!(problems.is_empty(), "max_memory: {size}: {problems:#?}");
    }

    let refused = [
        (
            "an unknown top-level key",
            good.replace("script:", "scirpt:"),
        ),
        (
            "an unknown nested key",
            good.replace("path: /hooks/lead", "pth: /hooks/lead"),
        ),
        ("a missing name", good.replace("name: lead\n", "")),
        (
            "an invalid name",
            good.replace("name: lead", "name: Lead Rule"),
        ),
        (
            "a wrong type",
            format!("{good}limits:\n  max_api_calls: lots\n"),
        ),
        (
            "a memory size that is no size",
            format!("{good}limits:\n  max_memory: lots\n"),
        ),
        (
            "a memory size in an unknown unit",
            format!("{good}limits:\n  max_memory: 2TB\n"),
        ),
        (
            "an unknown algorithm",
            good.replace(
                "path: /hooks/lead",
                "verify:\n      hmac: { secret: x, header: X-Sig, algorithm: md5 }",
            ),
        ),
        (
            "an unknown test status",
            format!("{good}tests:\n  - name: t\n    expect: {{ status: passed }}\n"),
        ),
        (
            "an unknown key in a test",
            format!("{good}tests:\n  - name: t\n    expct: {{}}\n"),
        ),
    ];
    for (what, text) in refused {
        let document = yaml(&text);
        assert!(
            !violations(&validator, &document).is_empty(),
            "the schema accepts {what}:\n{text}"
        );
    }
}
