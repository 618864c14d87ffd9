//! Rules: the loaded, validated and compiled form of the rule files, and the set of
//! them that a running service routes events to.

pub mod diagnostic;
pub mod file;
pub mod load;
pub mod reload;
pub mod schema;
pub mod spans;
pub mod testing;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

pub use diagnostic::{Diagnostic, Severity};
pub use file::TestSpec;
pub use load::{LoadReport, load_dir, load_file};

use crate::script::Compiled;

/// Limits of one run of a rule's script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub timeout: Duration,
    pub max_api_calls: u32,
    pub max_operations: u64,
    /// The most clients one run may change; `None` for no limit.
    pub max_changes: Option<u32>,
    /// The most memory, in bytes, a run may hold at once.
    pub max_memory: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(10),
            max_api_calls: 100,
            max_operations: 5_000_000,
            max_changes: None,
            max_memory: 256 << 20,
        }
    }
}

/// How a job whose run failed transiently is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Runs in all, the first included.
    pub attempts: u32,
    /// The wait before the second run; doubled for each run after, capped at an hour.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait after the given failed attempt (1 for the first run), before jitter.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let cap = Duration::from_secs(3600);
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.backoff.saturating_mul(factor).min(cap)
    }
}

/// How a webhook's deliveries are verified; every check present must pass.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    /// Addresses and ranges allowed to deliver; empty for any.
    pub allow_ips: Vec<ipnet::IpNet>,
    pub token: Option<TokenCheck>,
    pub basic: Option<BasicCheck>,
    pub hmac: Option<HmacCheck>,
    pub standard: Option<StandardCheck>,
}

impl Verification {
    /// Whether anything proves the sender: a signature, a secret or credentials.
    pub fn authenticates(&self) -> bool {
        self.token.is_some()
            || self.basic.is_some()
            || self.hmac.is_some()
            || self.standard.is_some()
    }
}

/// A shared secret in a header or a query parameter.
#[derive(Clone)]
pub struct TokenCheck {
    pub secrets: Vec<Vec<u8>>,
    /// Lowercase header name.
    pub header: Option<String>,
    pub query: Option<String>,
}

/// HTTP basic authentication.
#[derive(Clone)]
pub struct BasicCheck {
    pub username: String,
    pub password: String,
}

/// An HMAC signature over the raw body, or over `<timestamp>.<body>`.
#[derive(Clone)]
pub struct HmacCheck {
    /// Several while a secret is rotated; any one may match.
    pub secrets: Vec<Vec<u8>>,
    /// Lowercase header name.
    pub header: String,
    pub algorithm: HmacAlgorithm,
    pub encoding: SignatureEncoding,
    pub prefix: String,
    pub timestamp: Option<TimestampCheck>,
}

/// Where a signed timestamp is and how fresh it must be.
#[derive(Debug, Clone)]
pub struct TimestampCheck {
    /// Lowercase header name; `None` when the signature header reads `t=..,v1=..`.
    pub header: Option<String>,
    pub tolerance: Duration,
}

/// The Standard Webhooks scheme.
#[derive(Clone)]
pub struct StandardCheck {
    pub secrets: Vec<Vec<u8>>,
    pub tolerance: Duration,
}

// Secrets never appear in Debug output.
macro_rules! redacted_debug {
    ($($ty:ident),*) => {$(
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty)).finish_non_exhaustive()
            }
        }
    )*};
}
redacted_debug!(TokenCheck, BasicCheck, HmacCheck, StandardCheck);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HmacAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureEncoding {
    Hex,
    Base64,
}

/// A webhook trigger: the path it owns and how it answers.
#[derive(Debug, Clone)]
pub struct WebhookTrigger {
    pub path: String,
    pub verify: Option<Verification>,
    pub redirect: Option<String>,
    pub dedupe: Option<Compiled>,
}

/// What a tick does while the rule's previous scheduled run is unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// The tick is skipped and counted.
    Skip,
    /// The tick's run waits for the previous one to finish.
    Queue,
}

/// What the service does, when it starts, about ticks it missed while it was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Missed ticks are counted, and none runs.
    None,
    /// The most recent missed tick runs once; the others are counted.
    Latest,
}

/// A schedule trigger: a cron expression in a time zone, and what to do about ticks
/// that overlap a run or that fell while the service was down.
#[derive(Debug, Clone)]
pub struct ScheduleTrigger {
    pub schedule: crate::triggers::cron::Schedule,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
}

impl ScheduleTrigger {
    /// The cron expression as written.
    pub fn cron(&self) -> &str {
        self.schedule.cron.source()
    }

    pub fn timezone(&self) -> chrono_tz::Tz {
        self.schedule.timezone
    }
}

/// What a rule subscribes to. One a rule, built once at load: the size of the largest
/// variant costs nothing worth a box.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Trigger {
    Webhook(WebhookTrigger),
    Schedule(ScheduleTrigger),
}

/// One loaded rule, ready to run.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub description: Option<String>,
    pub file: PathBuf,
    pub trigger: Trigger,
    pub when: Option<Compiled>,
    pub script: Compiled,
    pub vars: Map<String, Value>,
    pub limits: Limits,
    pub retry: RetryPolicy,
    pub tests: Vec<TestSpec>,
    /// Warnings of the load (an open endpoint, say); errors keep a rule from loading.
    pub warnings: Vec<Diagnostic>,
}

impl Rule {
    pub fn webhook(&self) -> Option<&WebhookTrigger> {
        match &self.trigger {
            Trigger::Webhook(w) => Some(w),
            Trigger::Schedule(_) => None,
        }
    }

    pub fn schedule(&self) -> Option<&ScheduleTrigger> {
        match &self.trigger {
            Trigger::Schedule(s) => Some(s),
            Trigger::Webhook(_) => None,
        }
    }
}

/// The rules a service runs, by name and by webhook path.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Arc<Rule>>,
    by_name: HashMap<String, usize>,
    by_path: HashMap<String, usize>,
    /// Every problem of the last load, errors and warnings.
    pub diagnostics: Vec<Diagnostic>,
    /// Rule files whose latest version failed to load, with its errors: their last
    /// good version is the one in the set.
    pub stale: std::collections::BTreeMap<PathBuf, Vec<Diagnostic>>,
    /// Webhook paths of rule files that failed to load and have no good version
    /// running: deliveries there are refused with a status that makes senders retry.
    pub broken_paths: std::collections::HashSet<String>,
}

impl RuleSet {
    /// Builds the set from a load report. Rules clashing on a name or a path with a rule
    /// of an earlier file are left out, each with an error.
    pub fn from_report(report: LoadReport) -> RuleSet {
        let mut set = RuleSet {
            diagnostics: report.diagnostics,
            broken_paths: report.failed_paths.into_iter().collect(),
            ..RuleSet::default()
        };
        for loaded in report.rules {
            let rule = loaded.rule;
            if let Some(&other) = set.by_name.get(&rule.name) {
                let first = &set.rules[other];
                let mut d = Diagnostic::error(
                    &rule.file,
                    loaded.name_pos.line,
                    loaded.name_pos.column,
                    format!(
                        "duplicate rule name `{}`: {} already defines it",
                        rule.name,
                        first.file.display()
                    ),
                )
                .with_help("rule names must be unique; rename one of the two");
                d.rule = Some(rule.name.clone());
                set.diagnostics.push(d.with_source(loaded.source.clone()));
                continue;
            }
            if let Some(hook) = rule.webhook() {
                if let Some(&other) = set.by_path.get(&hook.path) {
                    let first = &set.rules[other];
                    let mut d = Diagnostic::error(
                        &rule.file,
                        loaded.path_pos.line,
                        loaded.path_pos.column,
                        format!(
                            "webhook path `{}` is already used by rule `{}` ({})",
                            hook.path,
                            first.name,
                            first.file.display()
                        ),
                    )
                    .with_help("each webhook path belongs to one rule");
                    d.rule = Some(rule.name.clone());
                    set.diagnostics.push(d.with_source(loaded.source.clone()));
                    continue;
                }
                set.by_path.insert(hook.path.clone(), set.rules.len());
            }
            set.by_name.insert(rule.name.clone(), set.rules.len());
            set.rules.push(Arc::new(rule));
        }
        set
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Rule>> {
        self.by_name.get(name).map(|&i| &self.rules[i])
    }

    /// The attempts a job of the rule gets: its `retry.attempts`, or one for a rule that
    /// is not loaded (its jobs wait until it is).
    pub fn attempts_of(&self, name: &str) -> u32 {
        self.get(name).map_or(1, |r| r.retry.attempts.max(1))
    }

    pub fn by_path(&self, path: &str) -> Option<&Arc<Rule>> {
        self.by_path.get(path).map(|&i| &self.rules[i])
    }

    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }
}
