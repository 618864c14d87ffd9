//! The JSON Schema of a rule file, for editors: generated from the serde structs of
//! [`super::file`], so it cannot drift from what the loader accepts, then given the
//! value rules that serde leaves to the validation step (names, enums, patterns) and
//! the descriptions an editor shows.

use serde_json::{Value, json};

use super::file::RuleFile;

/// The schema's identifier.
pub const SCHEMA_ID: &str = "urn:clientrules:rule-file";

/// The JSON Schema of a rule file.
pub fn rule_file_schema() -> Value {
    // Draft 7: the draft that YAML language servers support best.
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let mut schema = generator.into_root_schema_for::<RuleFile>().to_value();
    schema["$id"] = json!(SCHEMA_ID);
    schema["title"] = json!("clientrules rule file");
    schema["description"] = json!(
        "One rule: the trigger it subscribes to (`on`), an optional `when` guard, and the \
         Rhai script that searches, creates, updates and tags clients."
    );

    let root = "/properties";
    describe(
        &mut schema,
        root,
        "name",
        json!({
            "description": "Unique name of the rule: lowercase letters, digits and '-'.",
            "pattern": "^[a-z0-9][a-z0-9-]{0,63}$",
        }),
    );
    describe(
        &mut schema,
        root,
        "on",
        json!({
            "description": "The trigger: `webhook` or `schedule`, exactly one.",
        }),
    );
    describe(
        &mut schema,
        root,
        "when",
        json!({
            "description": "A Rhai expression; the run is skipped when it is false.",
        }),
    );
    describe(
        &mut schema,
        root,
        "vars",
        json!({
            "description": "Values the script reads as `vars.<name>`; `${VAR}` takes an \
                            environment variable.",
        }),
    );
    describe(
        &mut schema,
        root,
        "script",
        json!({
            "description": "The Rhai script. It sees `event` and `vars` and calls the clients::, \
                            log::, json::, text:: and time:: modules.",
        }),
    );
    describe(
        &mut schema,
        root,
        "script_file",
        json!({
            "description": "A .rhai file holding the script, relative to the rule file.",
        }),
    );
    describe(
        &mut schema,
        root,
        "tests",
        json!({
            "description": "Tests that `clientrules test` runs: an event, the clients that exist \
                            before, and what the run must leave behind.",
        }),
    );

    let defs = "/definitions";
    describe(
        &mut schema,
        &format!("{defs}/WebhookSpec/properties"),
        "path",
        json!({
            "description": "The path the webhook listens on; default /hooks/<name>.",
            "pattern": "^(/|\\$\\{)",
        }),
    );
    describe(
        &mut schema,
        &format!("{defs}/WebhookSpec/properties"),
        "dedupe",
        json!({
            "description": "A Rhai expression giving a delivery's dedupe key.",
        }),
    );
    describe(
        &mut schema,
        &format!("{defs}/HmacSpec/properties"),
        "algorithm",
        json!({
            "enum": ["sha1", "sha256", "sha512"],
        }),
    );
    describe(
        &mut schema,
        &format!("{defs}/HmacSpec/properties"),
        "encoding",
        json!({
            "enum": ["hex", "base64"],
        }),
    );
    describe(
        &mut schema,
        &format!("{defs}/ScheduleSpec/properties"),
        "cron",
        json!({
            "description": "A cron expression: 5 fields as in crontab, 6 or 7 with seconds \
                            (and year), or @daily, @hourly and friends.",
        }),
    );
    describe(
        &mut schema,
        &format!("{defs}/ScheduleSpec/properties"),
        "timezone",
        json!({
            "description": "An IANA time zone such as America/Denver; default UTC.",
        }),
    );
    describe(
        &mut schema,
        &format!("{defs}/ScheduleSpec/properties"),
        "overlap",
        json!({
            "enum": ["skip", "queue", null],
        }),
    );
    describe(
        &mut schema,
        &format!("{defs}/ScheduleSpec/properties"),
        "catch_up",
        json!({
            "enum": ["none", "latest", null],
        }),
    );
    let duration = json!({
        "description": "A duration such as 10s, 500ms or 5m.",
        "pattern": "^\\s*[0-9]",
    });
    for (def, key) in [
        ("LimitsSpec", "timeout"),
        ("RetrySpec", "backoff"),
        ("TimestampSpec", "tolerance"),
        ("StandardWebhooksSpec", "tolerance"),
    ] {
        describe(
            &mut schema,
            &format!("{defs}/{def}/properties"),
            key,
            duration.clone(),
        );
    }
    describe(
        &mut schema,
        &format!("{defs}/LimitsSpec/properties"),
        "max_memory",
        json!({
            "description": "The most memory a run may hold at once, such as 64MiB, 512KiB \
                            or 1GiB (from 1MiB to 16GiB); default 256MiB.",
            "pattern": "^\\s*[0-9]+\\s*([KkMmGg]([Ii]?[Bb])?|[Bb])?\\s*$",
        }),
    );
    describe(
        &mut schema,
        &format!("{defs}/ExpectSpec/properties"),
        "status",
        json!({
            "enum": ["succeeded", "skipped", "failed", null],
        }),
    );
    schema
}

/// Merges `extra` into the schema of the property `key` under `pointer`. A property
/// that is missing (the structs changed) is left alone: the schema stays valid, only
/// less helpful, and a test notices.
fn describe(schema: &mut Value, pointer: &str, key: &str, extra: Value) {
    let Some(Value::Object(property)) = schema
        .pointer_mut(pointer)
        .and_then(|properties| properties.get_mut(key))
    else {
        return;
    };
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            property.insert(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_described_property_exists() {
        let schema = rule_file_schema();
        for pointer in [
            "/properties/name/pattern",
            "/properties/script/description",
            "/definitions/HmacSpec/properties/algorithm/enum",
            "/definitions/ScheduleSpec/properties/cron/description",
            "/definitions/LimitsSpec/properties/timeout/pattern",
            "/definitions/LimitsSpec/properties/max_memory/pattern",
            "/definitions/ExpectSpec/properties/status/enum",
            "/definitions/WebhookSpec/properties/path/pattern",
        ] {
            assert!(schema.pointer(pointer).is_some(), "{pointer} is missing");
        }
        assert_eq!(schema["additionalProperties"], json!(false));
    }
}
