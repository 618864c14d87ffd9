//! The rule file as written: the strict serde schema of `rules/*.yaml`, before any
//! value is resolved, validated or compiled.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

/// One rule file. Unknown keys are errors, so a typo never silently disables a setting.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OnSpec {
    #[serde(default)]
    pub webhook: Option<WebhookSpec>,
    #[serde(default)]
    pub schedule: Option<ScheduleSpec>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
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

/// How deliveries prove who sent them. Every scheme given must pass.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifySpec {
    #[serde(default)]
    pub hmac: Option<HmacSpec>,
    #[serde(default)]
    pub standard_webhooks: Option<StandardWebhooksSpec>,
    #[serde(default)]
    pub token: Option<TokenSpec>,
    #[serde(default)]
    pub basic: Option<BasicSpec>,
    #[serde(default)]
    pub allow_ips: Option<Vec<String>>,
}

/// One secret, or several while a secret is being rotated.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Secrets {
    One(String),
    Many(Vec<String>),
}

impl Secrets {
    /// The secrets with their key paths relative to the `secret` key.
    pub fn items(&self) -> Vec<(String, &str)> {
        match self {
            Secrets::One(s) => vec![(String::new(), s.as_str())],
            Secrets::Many(list) => list
                .iter()
                .enumerate()
                .map(|(i, s)| (format!(".{i}"), s.as_str()))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacSpec {
    pub secret: Secrets,
    pub header: String,
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    #[serde(default = "default_encoding")]
    pub encoding: String,
    #[serde(default)]
    pub prefix: Option<String>,
    /// Signatures over `<timestamp>.<body>`, with the timestamp checked for freshness.
    #[serde(default)]
    pub timestamp: Option<TimestampSpec>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimestampSpec {
    /// The header holding the timestamp; without one, the signature header is read as
    /// `t=<timestamp>,v1=<signature>`.
    #[serde(default)]
    pub header: Option<String>,
    /// How far from now a timestamp may be, past or future; default 5 minutes.
    #[serde(default)]
    pub tolerance: Option<String>,
}

/// The Standard Webhooks scheme: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StandardWebhooksSpec {
    pub secret: Secrets,
    #[serde(default)]
    pub tolerance: Option<String>,
}

/// A shared secret sent as is, in a header or a query parameter.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    pub secret: Secrets,
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicSpec {
    pub username: String,
    pub password: String,
}

fn default_algorithm() -> String {
    "sha256".into()
}

fn default_encoding() -> String {
    "hex".into()
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RespondSpec {
    #[serde(default)]
    pub redirect: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
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
    #[serde(default)]
    pub max_memory: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Runs a job gets, the first included: 1 to 50 (default 5).
    #[serde(default)]
    #[schemars(range(min = 1, max = 50))]
    pub attempts: Option<u32>,
    #[serde(default)]
    pub backoff: Option<String>,
}

/// A test kept in the rule file: an event, the clients that exist before, and what
/// the run must leave behind.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
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

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GivenSpec {
    #[serde(default)]
    pub clients: Vec<Map<String, Value>>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
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
    "timestamp",
    "tolerance",
    "standard_webhooks",
    "token",
    "query",
    "basic",
    "username",
    "password",
    "allow_ips",
    "cron",
    "timezone",
    "overlap",
    "catch_up",
    "timeout",
    "max_api_calls",
    "max_operations",
    "max_changes",
    "max_memory",
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
