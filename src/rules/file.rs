//! The rule file as written: the strict serde schema of `rules/*.yaml`, before any
//! value is resolved, validated or compiled.

use serde::Deserialize;
use serde_json::{Map, Value};

/// One rule file. Unknown keys are errors, so a typo never silently disables a setting.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub on: OnSpec,
    #[serde(default)]
    pub when: Option<String>,
    #[serde(default)]
    pub vars: Map<String, Value>,
    #[serde(default)]
    pub script: Option<String>,
    #[serde(default)]
    pub script_file: Option<String>,
    #[serde(default)]
    pub limits: LimitsSpec,
    #[serde(default)]
    pub retry: RetrySpec,
    #[serde(default)]
    pub tests: Vec<TestSpec>,
}

/// What the rule subscribes to: exactly one trigger.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnSpec {
    #[serde(default)]
    pub webhook: Option<WebhookSpec>,
    #[serde(default)]
    pub schedule: Option<ScheduleSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub verify: Option<VerifySpec>,
    #[serde(default)]
    pub dedupe: Option<String>,
    #[serde(default)]
    pub respond: Option<RespondSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySpec {
    #[serde(default)]
    pub hmac: Option<HmacSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmacSpec {
    pub secret: String,
    pub header: String,
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    #[serde(default = "default_encoding")]
    pub encoding: String,
    #[serde(default)]
    pub prefix: Option<String>,
}

fn default_algorithm() -> String {
    "sha256".into()
}

fn default_encoding() -> String {
    "hex".into()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondSpec {
    #[serde(default)]
    pub redirect: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    pub cron: String,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub overlap: Option<String>,
    #[serde(default)]
    pub catch_up: Option<String>,
}

/// Per-run limits; each absent one takes the service default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub max_api_calls: Option<u32>,
    #[serde(default)]
    pub max_operations: Option<u64>,
    #[serde(default)]
    pub max_changes: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    #[serde(default)]
    pub attempts: Option<u32>,
    #[serde(default)]
    pub backoff: Option<String>,
}

/// A test kept in the rule file: an event, the clients that exist before, and what
/// the run must leave behind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestSpec {
    pub name: String,
    #[serde(default)]
    pub given: GivenSpec,
    #[serde(default)]
    pub event: Map<String, Value>,
    #[serde(default)]
    pub expect: ExpectSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GivenSpec {
    #[serde(default)]
    pub clients: Vec<Map<String, Value>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectSpec {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub clients: Option<Vec<Map<String, Value>>>,
    #[serde(default)]
    pub plan: Option<Vec<String>>,
    #[serde(default)]
    pub logs: Option<Vec<String>>,
}

/// Every key the schema knows at each level, for "did you mean" suggestions.
pub const ALL_KEYS: &[&str] = &[
    "name",
    "description",
    "on",
    "when",
    "vars",
    "script",
    "script_file",
    "limits",
    "retry",
    "tests",
    "webhook",
    "schedule",
    "path",
    "verify",
    "dedupe",
    "respond",
    "redirect",
    "hmac",
    "secret",
    "header",
    "algorithm",
    "encoding",
    "prefix",
    "cron",
    "timezone",
    "overlap",
    "catch_up",
    "timeout",
    "max_api_calls",
    "max_operations",
    "max_changes",
    "attempts",
    "backoff",
    "given",
    "event",
    "expect",
    "clients",
    "status",
    "plan",
    "logs",
];
