//! Loading rule files: parse strictly, resolve `${VAR}`, validate, compile. Every
//! problem of every file is collected, each with its file, rule, line and column.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::file::{HmacSpec, RuleFile, ScheduleSpec, Secrets, VerifySpec};
use super::spans::{Pos, Spans, Style};
use super::{
    BasicCheck, CatchUp, Diagnostic, HmacAlgorithm, HmacCheck, Limits, Overlap, RetryPolicy, Rule,
    ScheduleTrigger, SignatureEncoding, StandardCheck, TimestampCheck, TokenCheck, Trigger,
    Verification, WebhookTrigger,
};
use crate::script::{self, Compiled, Origin};
use crate::triggers::cron::{Cron, Schedule, parse_timezone};

/// Paths that belong to the service itself and that no webhook may take.
const RESERVED_PATHS: &[&str] = &["/api", "/healthz", "/readyz", "/metrics", "/ui"];

/// A rule that loaded, with what a rule set needs to report clashes between files.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub rule: Rule,
    pub source: Arc<str>,
    pub name_pos: Pos,
    pub path_pos: Pos,
}

/// The outcome of loading a folder or a file: the rules that loaded, and every problem.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub rules: Vec<Loaded>,
    /// The webhook paths of files that failed to load, as far as they can be told.
    pub failed_paths: Vec<String>,
    pub diagnostics: Vec<Diagnostic>,
    /// Rule files read, loaded or not.
    pub files: usize,
}

/// Where `${VAR}` values come from: the process environment in the service, a fixed map
/// in tests.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Reads the process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Loads every `*.yaml` and `*.yml` file of a folder, in name order.
pub fn load_dir(dir: &Path, env: EnvLookup<'_>) -> std::io::Result<LoadReport> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|p| is_rule_file(p))
        .collect();
    paths.sort();
    Ok(load_paths(&paths, env))
}

/// Loads the given rule files, in the order given.
pub fn load_paths(paths: &[PathBuf], env: EnvLookup<'_>) -> LoadReport {
    let mut report = LoadReport::default();
    for path in paths {
        let path = path.as_path();
        report.files += 1;
        let (loaded, mut diagnostics) = load_file(path, env);
        report.diagnostics.append(&mut diagnostics);
        match loaded {
            Some(loaded) => report.rules.push(loaded),
            None => report.failed_paths.extend(intended_path(path)),
        }
    }
    report
}

/// The webhook path a rule file that failed to load meant to serve, as far as a lenient
/// read of it tells: its `on.webhook.path`, or `/hooks/<name>`.
pub fn intended_path(file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(text.trim_start_matches('\u{feff}'))
    else {
        // Not YAML at all: the path its name would give, which is the usual one.
        let stem = file.file_stem()?.to_str()?;
        return valid_name(stem).then(|| format!("/hooks/{stem}"));
    };
    let webhook = doc.get("on")?.get("webhook")?;
    match webhook.get("path").and_then(serde_yaml::Value::as_str) {
        Some(path) => Some(path.to_owned()),
        None => Some(format!("/hooks/{}", doc.get("name")?.as_str()?)),
    }
}

/// Whether a path names a rule file by its extension.
pub fn is_rule_file(path: &Path) -> bool {
    path.is_file()
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml") | Some("yml")
        )
}

/// Loads one rule file: the rule when it has no error, and every problem found.
pub fn load_file(path: &Path, env: EnvLookup<'_>) -> (Option<Loaded>, Vec<Diagnostic>) {
    let mut bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            let d = Diagnostic::error(path, 1, 1, format!("cannot read the rule file: {e}"));
            return (None, vec![d]);
        }
    };
    // Some Windows editors start UTF-8 files with a byte-order mark: it is no text.
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        bytes.drain(..3);
    }
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            // The position of the bad byte, as a line and column a person can go to.
            let at = e.utf8_error().valid_up_to();
            let before = &e.as_bytes()[..at];
            let line = before.iter().filter(|b| **b == b'\n').count() + 1;
            let line_start = before
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
            let column = String::from_utf8_lossy(&before[line_start..])
                .chars()
                .count()
                + 1;
            let d = Diagnostic::error(
                path,
                line,
                column,
                "the file is not UTF-8 text: save it as UTF-8".to_owned(),
            );
            return (None, vec![d]);
        }
    };
    let mut loader = Loader {
        path: path.to_owned(),
        source: Arc::from(text.as_str()),
        rule: None,
        diagnostics: Vec::new(),
        removed: Vec::new(),
    };
    let loaded = loader.load(&text, env);
    // In the order of the file, as a reader goes through it.
    let mut diagnostics = loader.diagnostics;
    diagnostics.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    (loaded, diagnostics)
}

struct Loader {
    path: PathBuf,
    source: Arc<str>,
    rule: Option<String>,
    diagnostics: Vec<Diagnostic>,
    /// Keys reported as unknown or wrongly typed and left out to read the rest.
    removed: Vec<String>,
}

impl Loader {
    fn error(&mut self, pos: Pos, message: impl Into<String>) -> &mut Diagnostic {
        let mut d = Diagnostic::error(&self.path, pos.line, pos.column, message.into())
            .with_source(self.source.clone());
        d.rule = self.rule.clone();
        self.diagnostics.push(d);
        let last = self.diagnostics.len() - 1;
        &mut self.diagnostics[last]
    }

    fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    fn load(&mut self, text: &str, env: EnvLookup<'_>) -> Option<Loaded> {
        if text.trim().is_empty() {
            self.error(Pos { line: 1, column: 1 }, "the rule file is empty")
                .help = Some("a rule needs at least `name`, `on` and `script`".into());
            return None;
        }

        // The YAML structure first: syntax errors and duplicate keys, with exact positions.
        let spans = match Spans::index(text) {
            Ok(spans) => spans,
            Err((pos, message)) => {
                let indentation = indentation_problem(text, pos, &message);
                let pos = indentation.as_ref().map_or(pos, |(at, _)| *at);
                let d = self.error(pos, format!("YAML syntax error: {message}"));
                if message.contains("tab") {
                    d.help = Some("indent with spaces; YAML does not allow tabs".into());
                } else if let Some((_, help)) = indentation {
                    d.help = Some(help);
                }
                return None;
            }
        };
        for (pos, message) in &spans.problems {
            self.error(*pos, message.clone());
        }
        let had_structure_errors = !spans.problems.is_empty();
        // The rule's name, for every problem found from here on, when it is readable.
        self.rule = serde_yaml::from_str::<serde_yaml::Value>(text)
            .ok()
            .and_then(|v| v.get("name")?.as_str().map(str::to_owned));

        // Then the schema: unknown keys, wrong types, missing keys. A key that is unknown
        // or holds the wrong type is reported, blanked out of a copy of the text (its
        // lines left empty, so that every position stays true) and the copy read again:
        // every such mistake in the file is reported at once, and then what the checks
        // after the schema find.
        let mut attempt = text.to_owned();
        let mut removed: Vec<String> = Vec::new();
        let file: RuleFile = loop {
            match serde_yaml::from_str(&attempt) {
                Ok(file) => break file,
                // Duplicate keys and extra documents are already reported, with better
                // positions.
                Err(_) if had_structure_errors => return None,
                Err(e) => {
                    let problem = schema_problem(&e, &spans);
                    // What follows from a key already removed (its parent left empty,
                    // a required key gone, a misspelt key's right spelling missing) is
                    // not a mistake of its own.
                    if removed.iter().any(|r| {
                        is_within(r, &problem.path)
                            || (!problem.removable && parent(r) == parent(&problem.path))
                    }) {
                        return None;
                    }
                    // A key is removed only when its mapping keeps other keys: an
                    // emptied mapping would be a mistake of the reader's making.
                    let blanked = problem
                        .removable
                        .then(|| blank_key(&attempt, problem.pos.line))
                        .flatten()
                        .filter(|next| keeps_parent(next, &problem.path));
                    let path = problem.path.clone();
                    let d = self.error(problem.pos, problem.message);
                    d.help = problem.help;
                    match blanked {
                        Some(next) if removed.len() < MAX_SCHEMA_ERRORS => {
                            removed.push(path);
                            attempt = next;
                        }
                        _ => return None,
                    }
                }
            }
        };
        if had_structure_errors {
            return None;
        }
        self.removed = removed;
        self.rule = Some(file.name.clone());
        let rule = self.build(file, &spans, env);
        if self.errors() > 0 {
            return None;
        }
        Some(Loaded {
            rule: rule?,
            source: self.source.clone(),
            name_pos: spans.value_or_parent("name"),
            path_pos: spans.value_or_parent("on.webhook.path"),
        })
    }

    fn build(&mut self, file: RuleFile, spans: &Spans, env: EnvLookup<'_>) -> Option<Rule> {
        let name_pos = spans.value_or_parent("name");
        if !valid_name(&file.name) {
            self.error(name_pos, format!("invalid rule name `{}`", file.name))
                .help = Some(
                "use lowercase letters, digits and '-', starting with a letter or digit, \
                 at most 64 characters"
                    .into(),
            );
        }

        let trigger = self.trigger(&file, spans, env);
        let limits = self.limits(&file, spans);
        let retry = self.retry(&file, spans);
        let vars = self.vars(&file, spans, env);
        let script = self.script(&file, spans);
        let when = file.when.as_deref().and_then(|text| {
            let origin = self.origin_of(spans, "when");
            self.compile(script::compile_expression(text, origin))
        });
        self.check_tests(&file, spans);

        let mut warnings = Vec::new();
        if let Some(Trigger::Webhook(hook)) = &trigger
            && hook.verify.as_ref().is_none_or(|v| !v.authenticates())
        {
            let pos = spans.key_or_parent("on.webhook");
            let mut d = Diagnostic::warning(
                &self.path,
                pos.line,
                pos.column,
                format!("webhook {} is open: no `verify` is set", hook.path),
            )
            .with_help("anyone who knows the path can post events; add `on.webhook.verify`")
            .with_source(self.source.clone());
            d.rule = self.rule.clone();
            warnings.push(d.clone());
            self.diagnostics.push(d);
        }

        let (trigger, script) = (trigger?, script?);
        Some(Rule {
            name: file.name,
            description: file.description,
            file: self.path.clone(),
            trigger,
            when,
            script,
            vars,
            limits,
            retry,
            tests: file.tests,
            warnings,
        })
    }

    fn trigger(&mut self, file: &RuleFile, spans: &Spans, env: EnvLookup<'_>) -> Option<Trigger> {
        let on_pos = spans.key_or_parent("on");
        match (&file.on.webhook, &file.on.schedule) {
            (None, None) => {
                self.error(on_pos, "`on` names no trigger").help = Some(
                    "add `webhook:` (with an optional `path`) or `schedule:` (with a `cron` \
                     expression) under `on`"
                        .into(),
                );
                None
            }
            (Some(_), Some(_)) => {
                self.error(on_pos, "`on` has both `webhook` and `schedule`")
                    .help = Some("a rule has one trigger; split it into two rules".into());
                None
            }
            (None, Some(spec)) => self.schedule(spec, spans).map(Trigger::Schedule),
            (Some(hook), None) => {
                let path = match &hook.path {
                    Some(raw) => {
                        let pos = spans.value_or_parent("on.webhook.path");
                        let path = self.resolve(raw, pos, env)?;
                        self.check_path(&path, pos);
                        path
                    }
                    None => format!("/hooks/{}", file.name),
                };
                let redirect = match hook.respond.as_ref().and_then(|r| r.redirect.as_ref()) {
                    Some(raw) => {
                        let pos = spans.value_or_parent("on.webhook.respond.redirect");
                        let url = self.resolve(raw, pos, env)?;
                        if !(url.starts_with("https://") || url.starts_with("http://"))
                            || url.contains(char::is_whitespace)
                        {
                            self.error(
                                pos,
                                format!("expected an absolute http(s) URL, found `{url}`"),
                            );
                        }
                        Some(url)
                    }
                    None => None,
                };
                let verify = match &hook.verify {
                    Some(spec) => Some(self.verification(spec, spans, env)?),
                    None => None,
                };
                let dedupe = hook.dedupe.as_deref().and_then(|text| {
                    let origin = self.origin_of(spans, "on.webhook.dedupe");
                    self.compile(script::compile_expression(text, origin))
                });
                Some(Trigger::Webhook(WebhookTrigger {
                    path,
                    verify,
                    redirect,
                    dedupe,
                }))
            }
        }
    }

    /// Validates `on.schedule`: the cron expression, the zone, the policies, and that
    /// the schedule fires at all.
    fn schedule(&mut self, spec: &ScheduleSpec, spans: &Spans) -> Option<ScheduleTrigger> {
        let base = "on.schedule";
        let cron = match Cron::parse(&spec.cron) {
            Ok(cron) => Some(cron),
            Err(e) => {
                let pos = self.inside(spans, &format!("{base}.cron"), &spec.cron, e.offset);
                let message = format!("invalid cron expression `{}`: {}", spec.cron.trim(), e);
                self.error(pos, message).help = e.help.or_else(|| {
                    Some("five fields: minute hour day-of-month month day-of-week".into())
                });
                None
            }
        };
        let timezone = match &spec.timezone {
            None => Some(chrono_tz::Tz::UTC),
            Some(name) => match parse_timezone(name) {
                Ok(tz) => Some(tz),
                Err(e) => {
                    let pos = spans.value_or_parent(&format!("{base}.timezone"));
                    self.error(pos, e.message).help = e.help;
                    None
                }
            },
        };
        let overlap = match spec.overlap.as_deref().map(str::trim) {
            None | Some("skip") => Some(Overlap::Skip),
            Some("queue") => Some(Overlap::Queue),
            Some(other) => {
                let pos = spans.value_or_parent(&format!("{base}.overlap"));
                self.error(pos, format!("expected skip or queue, found `{other}`"))
                    .help = Some(
                    "skip: a tick while the last run is unfinished is skipped and counted; \
                     queue: it runs after the last run"
                        .into(),
                );
                None
            }
        };
        let catch_up = match spec.catch_up.as_deref().map(str::trim) {
            None | Some("latest") => Some(CatchUp::Latest),
            Some("none") => Some(CatchUp::None),
            Some(other) => {
                let pos = spans.value_or_parent(&format!("{base}.catch_up"));
                self.error(pos, format!("expected none or latest, found `{other}`"))
                    .help = Some(
                    "latest: after downtime, the last missed tick runs once; none: missed \
                     ticks are only counted"
                        .into(),
                );
                None
            }
        };
        let cron = cron?;
        // A schedule that never fires is a mistake, such as 30 February.
        if let Some(e) = cron.never_fires(chrono::Utc::now().naive_utc()) {
            let pos = spans.value_or_parent(&format!("{base}.cron"));
            self.error(pos, e.message).help = e.help;
            return None;
        }
        Some(ScheduleTrigger {
            schedule: Schedule::new(cron, timezone?),
            overlap: overlap?,
            catch_up: catch_up?,
        })
    }

    /// The position of a character inside a one-line scalar: the value's position moved
    /// by the character offset, past the opening quote of a quoted scalar.
    fn inside(&self, spans: &Spans, path: &str, text: &str, byte_offset: usize) -> Pos {
        let Some(entry) = spans.get(path) else {
            return spans.value_or_parent(path);
        };
        let chars = text.get(..byte_offset).map_or(0, |t| t.chars().count());
        match entry.style {
            Some(Style::Plain) => Pos {
                line: entry.value.line,
                column: entry.value.column + chars,
            },
            Some(Style::Quoted) => Pos {
                line: entry.value.line,
                column: entry.value.column + 1 + chars,
            },
            _ => entry.value,
        }
    }

    fn check_path(&mut self, path: &str, pos: Pos) {
        let problem = if !path.starts_with('/') {
            Some("a webhook path starts with `/`")
        } else if path.contains(['?', '#']) || path.contains(char::is_whitespace) {
            Some("a webhook path has no query, fragment or white space")
        } else if !path.is_ascii() || path.contains('%') {
            Some(
                "a webhook path is plain ASCII (letters, digits, `-`, `_`, `.`, `/`), since \
                 senders percent-encode anything else and the path would never match",
            )
        } else if path
            .split('/')
            .skip(1)
            .any(|segment| segment.is_empty() || segment == "." || segment == "..")
        {
            Some("a webhook path has no empty, `.` or `..` segments")
        } else if path.len() > 200 {
            Some("a webhook path is at most 200 characters")
        } else if RESERVED_PATHS
            .iter()
            .any(|r| path == *r || path.starts_with(&format!("{r}/")))
        {
            Some("this path belongs to the service itself")
        } else {
            None
        };
        if let Some(problem) = problem {
            self.error(pos, format!("invalid webhook path `{path}`: {problem}"));
        }
    }

    fn verification(
        &mut self,
        spec: &VerifySpec,
        spans: &Spans,
        env: EnvLookup<'_>,
    ) -> Option<Verification> {
        let base = "on.webhook.verify";
        let mut v = Verification::default();
        if spec.hmac.is_none()
            && spec.standard_webhooks.is_none()
            && spec.token.is_none()
            && spec.basic.is_none()
            && spec.allow_ips.is_none()
        {
            self.error(
                spans.key_or_parent(base),
                "`verify` names no verification scheme",
            )
            .help = Some("add one of hmac, standard_webhooks, token, basic or allow_ips".into());
            return None;
        }
        for (i, text) in spec.allow_ips.iter().flatten().enumerate() {
            let pos = spans.value_or_parent(&format!("{base}.allow_ips.{i}"));
            match parse_net(text) {
                Some(net) => v.allow_ips.push(net),
                None => {
                    self.error(
                        pos,
                        format!("expected an IP address or a CIDR range such as 192.0.2.0/24, found `{text}`"),
                    );
                }
            }
        }
        if let Some(token) = &spec.token {
            let secrets =
                self.secrets(&token.secret, &format!("{base}.token.secret"), spans, env)?;
            if token.header.is_none() == token.query.is_none() {
                self.error(
                    spans.key_or_parent(&format!("{base}.token")),
                    "`token` needs exactly one of `header` or `query`",
                );
            }
            let header = token
                .header
                .as_ref()
                .map(|h| self.header_name(h, &format!("{base}.token.header"), spans));
            v.token = Some(TokenCheck {
                secrets,
                header,
                query: token.query.clone(),
            });
        }
        if let Some(basic) = &spec.basic {
            let user = self.resolve(
                &basic.username,
                spans.value_or_parent(&format!("{base}.basic.username")),
                env,
            )?;
            let password = self.resolve(
                &basic.password,
                spans.value_or_parent(&format!("{base}.basic.password")),
                env,
            )?;
            if user.is_empty() || password.is_empty() || user.contains(':') {
                self.error(
                    spans.key_or_parent(&format!("{base}.basic")),
                    "basic authentication needs a username without `:` and a password, both non-empty",
                );
            }
            v.basic = Some(BasicCheck {
                username: user,
                password,
            });
        }
        if let Some(spec) = &spec.hmac {
            v.hmac = Some(self.hmac(spec, spans, env)?);
        }
        if let Some(std) = &spec.standard_webhooks {
            let path = format!("{base}.standard_webhooks");
            let raw = self.secrets(&std.secret, &format!("{path}.secret"), spans, env)?;
            let mut secrets = Vec::new();
            for secret in raw {
                let text = String::from_utf8_lossy(&secret).into_owned();
                let encoded = text.strip_prefix("whsec_").unwrap_or(&text);
                match base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded) {
                    Ok(key) if !key.is_empty() => secrets.push(key),
                    _ => {
                        self.error(
                            spans.value_or_parent(&format!("{path}.secret")),
                            "expected a Standard Webhooks secret: `whsec_` followed by base64",
                        );
                        return None;
                    }
                }
            }
            let tolerance = self.tolerance(
                std.tolerance.as_deref(),
                &format!("{path}.tolerance"),
                spans,
            );
            v.standard = Some(StandardCheck { secrets, tolerance });
        }
        Some(v)
    }

    fn tolerance(&mut self, text: Option<&str>, path: &str, spans: &Spans) -> Duration {
        let default = Duration::from_secs(300);
        match text {
            Some(text) => self
                .duration(
                    text,
                    spans.value_or_parent(path),
                    Duration::from_secs(1),
                    Duration::from_secs(86_400),
                )
                .unwrap_or(default),
            None => default,
        }
    }

    fn header_name(&mut self, text: &str, path: &str, spans: &Spans) -> String {
        let header = text.trim().to_ascii_lowercase();
        if axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            self.error(
                spans.value_or_parent(path),
                format!("expected an HTTP header name, found `{text}`"),
            );
        }
        header
    }

    /// Resolves one secret or a list of them; each must be non-empty.
    fn secrets(
        &mut self,
        secrets: &Secrets,
        path: &str,
        spans: &Spans,
        env: EnvLookup<'_>,
    ) -> Option<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let items = secrets.items();
        if items.is_empty() {
            self.error(spans.value_or_parent(path), "expected at least one secret");
            return None;
        }
        for (suffix, raw) in items {
            let pos = spans.value_or_parent(&format!("{path}{suffix}"));
            let secret = self.resolve(raw, pos, env)?;
            if secret.is_empty() {
                self.error(pos, "the secret is empty");
                return None;
            }
            out.push(secret.into_bytes());
        }
        Some(out)
    }

    fn hmac(&mut self, spec: &HmacSpec, spans: &Spans, env: EnvLookup<'_>) -> Option<HmacCheck> {
        let base = "on.webhook.verify.hmac";
        let secrets = self.secrets(&spec.secret, &format!("{base}.secret"), spans, env)?;
        let algorithm = match spec.algorithm.as_str() {
            "sha1" => HmacAlgorithm::Sha1,
            "sha256" => HmacAlgorithm::Sha256,
            "sha512" => HmacAlgorithm::Sha512,
            other => {
                self.error(
                    spans.value_or_parent(&format!("{base}.algorithm")),
                    format!("expected sha1, sha256 or sha512, found `{other}`"),
                );
                return None;
            }
        };
        let encoding = match spec.encoding.as_str() {
            "hex" => SignatureEncoding::Hex,
            "base64" => SignatureEncoding::Base64,
            other => {
                self.error(
                    spans.value_or_parent(&format!("{base}.encoding")),
                    format!("expected hex or base64, found `{other}`"),
                );
                return None;
            }
        };
        let header = self.header_name(&spec.header, &format!("{base}.header"), spans);
        let timestamp = spec.timestamp.as_ref().map(|t| TimestampCheck {
            header: t
                .header
                .as_ref()
                .map(|h| self.header_name(h, &format!("{base}.timestamp.header"), spans)),
            tolerance: self.tolerance(
                t.tolerance.as_deref(),
                &format!("{base}.timestamp.tolerance"),
                spans,
            ),
        });
        Some(HmacCheck {
            secrets,
            header,
            algorithm,
            encoding,
            prefix: spec.prefix.clone().unwrap_or_default(),
            timestamp,
        })
    }

    fn limits(&mut self, file: &RuleFile, spans: &Spans) -> Limits {
        let mut limits = Limits::default();
        let spec = &file.limits;
        if let Some(text) = &spec.timeout {
            let pos = spans.value_or_parent("limits.timeout");
            if let Some(d) = self.duration(
                text,
                pos,
                Duration::from_millis(1),
                Duration::from_secs(300),
            ) {
                limits.timeout = d;
            }
        }
        if let Some(n) = spec.max_api_calls {
            if n == 0 || n > 1_000_000 {
                self.error(
                    spans.value_or_parent("limits.max_api_calls"),
                    format!("expected a number of API calls from 1 to 1000000, found {n}"),
                );
            }
            limits.max_api_calls = n;
        }
        if let Some(n) = spec.max_operations {
            if !(1_000..=10_000_000_000).contains(&n) {
                self.error(
                    spans.value_or_parent("limits.max_operations"),
                    format!("expected a number of operations from 1000 to 10000000000, found {n}"),
                );
            }
            limits.max_operations = n;
        }
        if let Some(n) = spec.max_changes {
            limits.max_changes = Some(n);
        }
        if let Some(text) = &spec.max_memory {
            const MIN: u64 = 1 << 20;
            const MAX: u64 = 16 << 30;
            let pos = spans.value_or_parent("limits.max_memory");
            match crate::size::parse(text) {
                Ok(bytes) if (MIN..=MAX).contains(&bytes) => limits.max_memory = bytes,
                Ok(_) => {
                    self.error(
                        pos,
                        format!("expected a memory size from 1MiB to 16GiB, found {text:?}"),
                    );
                }
                Err(e) => {
                    self.error(pos, e);
                }
            }
        }
        limits
    }

    fn retry(&mut self, file: &RuleFile, spans: &Spans) -> RetryPolicy {
        let mut retry = RetryPolicy::default();
        if let Some(n) = file.retry.attempts {
            if n == 0 || n > 50 {
                self.error(
                    spans.value_or_parent("retry.attempts"),
                    format!("expected a number of attempts from 1 to 50, found {n}"),
                );
            }
            retry.attempts = n;
        }
        if let Some(text) = &file.retry.backoff {
            let pos = spans.value_or_parent("retry.backoff");
            if let Some(d) = self.duration(
                text,
                pos,
                Duration::from_millis(1),
                Duration::from_secs(3600),
            ) {
                retry.backoff = d;
            }
        }
        retry
    }

    fn duration(&mut self, text: &str, pos: Pos, min: Duration, max: Duration) -> Option<Duration> {
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d >= min && d <= max => Some(d),
            Ok(_) => {
                self.error(
                    pos,
                    format!(
                        "expected a duration from {} to {}, found `{text}`",
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                );
                None
            }
            Err(_) => {
                self.error(
                    pos,
                    format!("expected a duration such as `10s`, `500ms` or `5m`, found `{text}`"),
                );
                None
            }
        }
    }

    fn vars(
        &mut self,
        file: &RuleFile,
        spans: &Spans,
        env: EnvLookup<'_>,
    ) -> serde_json::Map<String, serde_json::Value> {
        let mut vars = file.vars.clone();
        for (key, value) in vars.iter_mut() {
            self.resolve_value(value, &format!("vars.{key}"), spans, env);
        }
        vars
    }

    fn resolve_value(
        &mut self,
        value: &mut serde_json::Value,
        path: &str,
        spans: &Spans,
        env: EnvLookup<'_>,
    ) {
        match value {
            serde_json::Value::String(text) => {
                let pos = spans.value_or_parent(path);
                if let Some(resolved) = self.resolve(text, pos, env) {
                    *text = resolved;
                }
            }
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.resolve_value(item, &format!("{path}.{i}"), spans, env);
                }
            }
            serde_json::Value::Object(map) => {
                for (k, item) in map.iter_mut() {
                    self.resolve_value(item, &format!("{path}.{k}"), spans, env);
                }
            }
            _ => {}
        }
    }

    /// Replaces `${VAR}` with the variable's value; `$${` stands for a literal `${`.
    fn resolve(&mut self, text: &str, pos: Pos, env: EnvLookup<'_>) -> Option<String> {
        match substitute(text, env) {
            Ok(out) => Some(out),
            Err(problem) => {
                let d = self.error(pos, problem.message());
                if let EnvProblem::Unset(name) = &problem {
                    d.help = Some(format!("set {name} in the service's environment"));
                }
                None
            }
        }
    }

    fn script(&mut self, file: &RuleFile, spans: &Spans) -> Option<Compiled> {
        match (&file.script, &file.script_file) {
            (Some(_), Some(_)) => {
                self.error(
                    spans.key_or_parent("script_file"),
                    "both `script` and `script_file` are set",
                )
                .help = Some("keep one of the two".into());
                None
            }
            // A misspelt `script`, already reported, is not missing as well.
            (None, None) if self.removed.iter().any(|r| parent(r).is_empty()) => None,
            (None, None) => {
                self.error(Pos { line: 1, column: 1 }, "missing key `script`")
                    .help =
                    Some("add `script:` with the Rhai code, or `script_file:` with a path".into());
                None
            }
            (Some(text), None) => {
                let origin = self.origin_of(spans, "script");
                self.compile(script::compile_script(text, origin))
            }
            (None, Some(relative)) => {
                let pos = spans.value_or_parent("script_file");
                let base = self.path.parent().unwrap_or(Path::new("."));
                let path = base.join(relative);
                let text = match std::fs::read_to_string(&path) {
                    Ok(text) => text,
                    Err(e) => {
                        self.error(
                            pos,
                            format!("cannot read script file {}: {e}", path.display()),
                        )
                        .help = Some("paths are relative to the rule file's folder".into());
                        return None;
                    }
                };
                let origin = Origin {
                    file: path,
                    line_offset: 0,
                    column_offset: 0,
                    source: Arc::from(text.as_str()),
                };
                self.compile(script::compile_script(&text, origin))
            }
        }
    }

    /// Where a script embedded at `path` starts in the rule file.
    fn origin_of(&self, spans: &Spans, path: &str) -> Origin {
        let (line_offset, column_offset) = match spans.get(path) {
            Some(entry) => match entry.style {
                // A block scalar is reported at its first content line, already indented.
                Some(Style::Block) => (entry.value.line - 1, entry.value.column - 1),
                // A quoted scalar's text starts after the quote.
                Some(Style::Quoted) => (entry.value.line - 1, entry.value.column),
                _ => (entry.value.line - 1, entry.value.column - 1),
            },
            None => (0, 0),
        };
        Origin {
            file: self.path.clone(),
            line_offset,
            column_offset,
            source: self.source.clone(),
        }
    }

    fn compile(&mut self, result: Result<Compiled, Vec<Diagnostic>>) -> Option<Compiled> {
        match result {
            Ok(compiled) => Some(compiled),
            Err(problems) => {
                for mut d in problems {
                    d.rule = self.rule.clone();
                    self.diagnostics.push(d);
                }
                None
            }
        }
    }

    fn check_tests(&mut self, file: &RuleFile, spans: &Spans) {
        let mut names = std::collections::HashSet::new();
        for (i, test) in file.tests.iter().enumerate() {
            let pos = spans.value_or_parent(&format!("tests.{i}.name"));
            if test.name.trim().is_empty() {
                self.error(pos, "a test needs a non-empty `name`");
            } else if !names.insert(test.name.clone()) {
                self.error(pos, format!("duplicate test name `{}`", test.name));
            }
            if let Some(status) = &test.expect.status
                && !matches!(status.as_str(), "succeeded" | "skipped" | "failed")
            {
                self.error(
                    spans.value_or_parent(&format!("tests.{i}.expect.status")),
                    format!("expected succeeded, skipped or failed, found `{status}`"),
                );
            }
        }
    }
}

/// Why a `${VAR}` could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvProblem {
    Unset(String),
    Malformed(String),
}

impl EnvProblem {
    pub fn message(&self) -> String {
        match self {
            EnvProblem::Unset(name) => format!("environment variable `{name}` is not set"),
            EnvProblem::Malformed(text) => {
                format!("expected `${{NAME}}` with a variable name, found `{text}`")
            }
        }
    }
}

/// The most schema mistakes reported for one file.
const MAX_SCHEMA_ERRORS: usize = 50;

/// A schema mistake: where, the dotted path of the key, what is wrong, and whether the
/// key can be removed to read on.
struct SchemaProblem {
    pos: Pos,
    path: String,
    message: String,
    help: Option<String>,
    removable: bool,
}

/// Turns a serde error into a problem that says what was expected and found.
fn schema_problem(e: &serde_yaml::Error, spans: &Spans) -> SchemaProblem {
    let pos = e
        .location()
        .map(|l| Pos {
            line: l.line(),
            column: l.column(),
        })
        .unwrap_or(Pos { line: 1, column: 1 });
    let raw = e.to_string();
    let message = match raw.rfind(" at line ") {
        Some(cut) => raw[..cut].to_owned(),
        None => raw,
    };
    let (context, detail) = match message.split_once(": ") {
        Some((ctx, rest)) if !ctx.contains(' ') => (Some(ctx.to_owned()), rest.to_owned()),
        _ => (None, message.clone()),
    };
    let place = context
        .as_ref()
        .map(|c| format!(" in `{c}`"))
        .unwrap_or_default();
    let child = |name: &str| match &context {
        Some(c) => format!("{c}.{name}"),
        None => name.to_owned(),
    };
    let problem = |message: String, path: String, removable: bool| SchemaProblem {
        pos,
        path,
        message,
        help: None,
        removable,
    };

    if let Some(rest) = detail.strip_prefix("unknown field `") {
        let (unknown, expected) = match rest.split_once('`') {
            Some((name, tail)) => (name.to_owned(), expected_names(tail)),
            None => (rest.to_owned(), Vec::new()),
        };
        let mut p = problem(
            format!("unknown key `{unknown}`{place}"),
            child(&unknown),
            true,
        );
        p.help = Some(match nearest(&unknown, &expected) {
            Some(best) => format!(
                "did you mean `{best}`? valid keys here: {}",
                expected.join(", ")
            ),
            None => format!("valid keys here: {}", expected.join(", ")),
        });
        return p;
    }
    if let Some(rest) = detail.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        let at = context
            .as_ref()
            .map(|c| spans.key_or_parent(c))
            .unwrap_or(Pos { line: 1, column: 1 });
        let mut p = problem(format!("missing key `{name}`{place}"), child(name), false);
        p.pos = at;
        if name == "name" && context.is_none() {
            p.help = Some("every rule needs a unique `name`".into());
        }
        return p;
    }
    let path = context.clone().unwrap_or_default();
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = detail.strip_prefix(prefix)
            && let Some((found, expected)) = rest.split_once(", expected ")
        {
            return problem(
                format!(
                    "expected {}{place}, found {found}",
                    describe_expected(expected)
                ),
                path,
                true,
            );
        }
    }
    problem(format!("{detail}{place}"), path, false)
}

/// The dotted path of the mapping that holds `path`: `on.webhook` for `on.webhook.path`.
fn parent(path: &str) -> &str {
    path.rfind(['.', '[']).map_or("", |cut| &path[..cut])
}

/// Whether the mapping that held the removed key `path` still holds something in `text`.
fn keeps_parent(text: &str, path: &str) -> bool {
    let Ok(mut value) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
        return false;
    };
    let holder = parent(path);
    if !holder.is_empty() {
        for segment in holder.split('.') {
            let (key, indexes) = segment.split_once('[').unwrap_or((segment, ""));
            let Some(next) = value.get(key) else {
                return false;
            };
            value = next.clone();
            for index in indexes.split('[').filter(|i| !i.is_empty()) {
                let Some(next) = index
                    .trim_end_matches(']')
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| value.get(i))
                else {
                    return false;
                };
                value = next.clone();
            }
        }
    }
    value.as_mapping().is_some_and(|m| !m.is_empty())
}

/// Whether `path` is `removed` or one of the keys that hold it.
fn is_within(removed: &str, path: &str) -> bool {
    path.is_empty()
        || removed == path
        || removed
            .strip_prefix(path)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// The text with the key on line `line` (1-based) and everything indented under it
/// made empty lines, or `None` when that line holds no plain `key:` to remove.
fn blank_key(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.split('\n').collect();
    let first = line.checked_sub(1)?;
    let key_line = lines.get(first)?;
    let trimmed = key_line.trim_start();
    if trimmed.starts_with('-') || trimmed.starts_with('#') || !trimmed.contains(':') {
        return None;
    }
    let indent = key_line.len() - trimmed.len();
    let mut end = first + 1;
    while let Some(next) = lines.get(end) {
        let rest = next.trim_start();
        if rest.is_empty() || next.len() - rest.len() > indent {
            end += 1;
        } else {
            break;
        }
    }
    let kept: Vec<&str> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| if (first..end).contains(&i) { "" } else { *l })
        .collect();
    Some(kept.join("\n"))
}

/// Replaces every `${NAME}` in a text; `$${` is a literal `${`.
pub fn substitute(text: &str, env: EnvLookup<'_>) -> Result<String, EnvProblem> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                return Err(EnvProblem::Malformed(tail.chars().take(40).collect()));
            };
            let name = &after[..end];
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(EnvProblem::Malformed(format!("${{{name}}}")));
            }
            match env(name) {
                Some(value) => out.push_str(&value),
                None => return Err(EnvProblem::Unset(name.to_owned())),
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// An address (`192.0.2.7`) or a range (`192.0.2.0/24`, `2001:db8::/32`).
pub fn parse_net(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

/// For a YAML error that a wrongly indented line causes, the start of that line and
/// a help that compares its indentation with the lines above it.
fn indentation_problem(text: &str, pos: Pos, message: &str) -> Option<(Pos, String)> {
    const SIGNS: &[&str] = &[
        "did not find expected key",
        "mapping values are not allowed",
        "did not find expected '-'",
        "block mapping",
        "block sequence",
    ];
    if !SIGNS.iter().any(|s| message.contains(s)) {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start_matches(' ').len();
    fn meaningful(line: &&&str) -> bool {
        let t = line.trim();
        !t.is_empty() && !t.starts_with('#')
    }
    let index = pos.line.checked_sub(1)?;
    let line = lines.get(index).filter(meaningful)?;
    let own = indent(line);
    // The indentations in use above: a wrongly indented key matches none of them.
    let mut above: Vec<usize> = lines[..index]
        .iter()
        .filter(meaningful)
        .map(|l| indent(l))
        .collect();
    above.sort_unstable();
    above.dedup();
    if above.contains(&own) {
        return None;
    }
    let columns = above
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let at = Pos {
        line: pos.line,
        column: own + 1,
    };
    Some((
        at,
        format!(
            "line {} is indented by {own} space{}, but the lines above use {columns}; \
             keys of one mapping start in the same column",
            pos.line,
            if own == 1 { "" } else { "s" }
        ),
    ))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
}

/// The field names of serde's "expected one of `a`, `b`" tail.
fn expected_names(tail: &str) -> Vec<String> {
    tail.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The closest valid key to a misspelt one, when it is close enough to be a typo.
fn nearest<'a>(unknown: &str, candidates: &'a [String]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(unknown, c), c))
        .filter(|(distance, c)| *distance <= 2.max(c.len() / 3))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c.as_str())
}

/// serde's type names, in the words of a rule file's author.
fn describe_expected(expected: &str) -> String {
    match expected {
        "u32" | "u64" | "usize" => "a whole number".into(),
        "a string" => "a string".into(),
        "a boolean" => "true or false".into(),
        e if e.starts_with("struct ") => "a mapping of keys".into(),
        "a map" => "a mapping of keys".into(),
        "a sequence" => "a list".into(),
        other => other.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::rules::RuleSet;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env(name: &str) -> Option<String> {
        (name == "FORM_SECRET").then(|| "s3cret".to_owned())
    }

    /// Loads one rule text from a temporary file; returns the rule and the errors.
    fn load_text(text: &str) -> (Option<Rule>, Vec<Diagnostic>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rule.yaml");
        std::fs::write(&path, text).unwrap();
        let (loaded, diagnostics) = load_file(&path, &env);
        let errors = diagnostics
            .into_iter()
            .filter(Diagnostic::is_error)
            .collect();
        (loaded.map(|l| l.rule), errors)
    }

    fn only_error(text: &str) -> Diagnostic {
        let (rule, errors) = load_text(text);
        assert!(rule.is_none(), "expected the rule to fail to load");
        assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
        errors.into_iter().next().unwrap()
    }

    const GOOD: &str = "name: lead\non:\n  webhook: {}\nscript: |\n  let x = 1;\n";

    #[test]
    fn a_minimal_rule_loads_with_defaults() {
        let (rule, errors) = load_text(GOOD);
        assert!(errors.is_empty(), "{errors:#?}");
        let rule = rule.unwrap();
        assert_eq!(rule.webhook().unwrap().path, "/hooks/lead");
        assert_eq!(rule.limits.timeout, Duration::from_secs(10));
        assert_eq!(rule.warnings.len(), 1, "an open endpoint is a warning");
    }

    #[test]
    fn unknown_key_suggests_the_nearest() {
        let d = only_error("name: lead\non:\n  webhook: {}\nscirpt: |\n  let x = 1;\n");
        assert_eq!((d.line, d.column), (4, 1));
        assert!(d.message.contains("unknown key `scirpt`"), "{}", d.message);
        assert!(d.help.unwrap().contains("did you mean `script`?"));
        assert_eq!(d.rule.as_deref(), Some("lead"));
    }

    #[test]
    fn every_schema_mistake_of_a_file_is_reported_with_the_checks_after_them() {
        let text = "name: lead\ndescripton: typo\non:\n  webhook:\n    pathh: /hooks/lead\n    dedupe: event.body.id\nlimits:\n  timeout: 10s\n  max_api_call: 3\nretry:\n  attempts: many\n  backoff: 5s\nscript: |\n  let x = ;\n";
        let (rule, errors) = load_text(text);
        assert!(rule.is_none());
        let found: Vec<(usize, usize, &str)> = errors
            .iter()
            .map(|d| (d.line, d.column, d.message.as_str()))
            .collect();
        assert_eq!(found.len(), 5, "{found:#?}");
        assert_eq!((found[0].0, found[0].1), (2, 1));
        assert!(found[0].2.contains("unknown key `descripton`"));
        assert_eq!((found[1].0, found[1].1), (5, 5));
        assert!(found[1].2.contains("unknown key `pathh` in `on.webhook`"));
        assert_eq!((found[2].0, found[2].1), (9, 3));
        assert!(
            found[2]
                .2
                .contains("unknown key `max_api_call` in `limits`")
        );
        assert_eq!((found[3].0, found[3].1), (11, 13));
        assert!(
            found[3]
                .2
                .contains("in `retry.attempts`, found string \"many\"")
        );
        assert_eq!(found[4].0, 14);
        assert!(found[4].2.contains("script error"), "{}", found[4].2);
        assert!(errors.iter().all(|d| d.rule.as_deref() == Some("lead")));
    }

    #[test]
    fn a_removed_key_causes_no_second_error() {
        // The only key of a mapping: removing it would empty `on.webhook`.
        let d = only_error("name: lead\non:\n  webhook:\n    pth: /x\nscript: \"let x = 1;\"\n");
        assert!(d.message.contains("unknown key `pth`"), "{}", d.message);
        // A required key of the wrong type is not missing as well.
        let d = only_error("name: lead\non:\n  webhook: {}\nscript: [1, 2]\n");
        assert!(d.message.contains("in `script`"), "{}", d.message);
        // Nor is the schedule of a wrongly typed cron.
        let d = only_error(
            "name: lead\non:\n  schedule:\n    cron: [1]\n    timezone: UTC\nscript: \"let x = 1;\"\n",
        );
        assert!(d.message.contains("in `on.schedule.cron`"), "{}", d.message);
    }

    #[test]
    fn unknown_nested_key_names_its_place() {
        let d = only_error("name: lead\non:\n  webhook:\n    pth: /x\nscript: \"let x = 1;\"\n");
        assert_eq!((d.line, d.column), (4, 5));
        assert!(d.message.contains("in `on.webhook`"), "{}", d.message);
        assert!(d.help.unwrap().contains("`path`"));
    }

    #[test]
    fn duplicate_keys_are_errors_at_the_second() {
        let d = only_error("name: lead\nname: other\non:\n  webhook: {}\nscript: \"let x = 1;\"\n");
        assert_eq!(d.line, 2);
        assert!(d.message.contains("duplicate key `name`"), "{}", d.message);
        let d = only_error(
            "name: lead\non:\n  webhook: {}\nvars:\n  a: 1\n  a: 2\nscript: \"let x = 1;\"\n",
        );
        assert_eq!(d.line, 6);
    }

    #[test]
    fn wrong_types_say_what_was_expected_and_found() {
        let d = only_error(
            "name: lead\non:\n  webhook: {}\nlimits:\n  max_api_calls: lots\nscript: \"let x = 1;\"\n",
        );
        assert_eq!(d.line, 5);
        assert!(
            d.message.contains("expected a whole number"),
            "{}",
            d.message
        );
        assert!(d.message.contains("found string"), "{}", d.message);
    }

    #[test]
    fn a_tab_is_a_syntax_error_with_help() {
        let d = only_error("name: lead\non:\n\twebhook: {}\nscript: \"let x = 1;\"\n");
        assert_eq!(d.line, 3);
        assert!(d.help.unwrap().contains("spaces"));
    }

    #[test]
    fn bad_indentation_is_a_syntax_error() {
        let d = only_error(
            "name: lead\non:\n  webhook:\n    path: /a\n   respond: {}\nscript: \"let x = 1;\"\n",
        );
        assert!(d.message.contains("YAML syntax error"), "{}", d.message);
        assert!(d.line >= 4, "{d:?}");
    }

    #[test]
    fn missing_required_keys() {
        let d = only_error("on:\n  webhook: {}\nscript: \"let x = 1;\"\n");
        assert!(d.message.contains("missing key `name`"), "{}", d.message);
        let d = only_error("name: lead\non:\n  webhook: {}\n");
        assert!(d.message.contains("missing key `script`"), "{}", d.message);
        let d = only_error("   \n");
        assert!(d.message.contains("empty"), "{}", d.message);
    }

    #[test]
    fn invalid_names_and_paths() {
        let d = only_error("name: Lead_1\non:\n  webhook: {}\nscript: \"let x = 1;\"\n");
        assert!(d.message.contains("invalid rule name"), "{}", d.message);
        assert_eq!(d.line, 1);
        let d =
            only_error("name: lead\non:\n  webhook:\n    path: hooks/x\nscript: \"let x = 1;\"\n");
        assert!(d.message.contains("starts with `/`"), "{}", d.message);
        assert_eq!((d.line, d.column), (4, 11));
        let d =
            only_error("name: lead\non:\n  webhook:\n    path: /api/x\nscript: \"let x = 1;\"\n");
        assert!(
            d.message.contains("belongs to the service"),
            "{}",
            d.message
        );
        for (path, problem) in [
            ("/hooks/café", "plain ASCII"),
            ("/hooks/caf%C3%A9", "plain ASCII"),
            ("/hooks/../api", "`..` segments"),
            ("/hooks/./x", "`..` segments"),
            ("/hooks//x", "empty"),
        ] {
            let d = only_error(&format!(
                "name: lead\non:\n  webhook:\n    path: {path}\nscript: \"let x = 1;\"\n"
            ));
            assert!(d.message.contains(problem), "{path}: {}", d.message);
        }
    }

    #[test]
    fn unset_environment_variable_is_an_error() {
        let text = "name: lead\non:\n  webhook:\n    verify:\n      hmac:\n        secret: ${NOPE}\n        header: X-Sig\nscript: \"let x = 1;\"\n";
        let d = only_error(text);
        assert!(d.message.contains("`NOPE` is not set"), "{}", d.message);
        assert_eq!(d.line, 6);
        let ok = text.replace("NOPE", "FORM_SECRET");
        let (rule, errors) = load_text(&ok);
        assert!(errors.is_empty(), "{errors:#?}");
        let verify = rule.unwrap().webhook().unwrap().verify.clone().unwrap();
        let hmac = verify.hmac.unwrap();
        assert_eq!(hmac.secrets, vec![b"s3cret".to_vec()]);
        assert_eq!(hmac.header, "x-sig");
    }

    #[test]
    fn substitution_rules() {
        let lookup = |name: &str| (name == "A").then(|| "1".to_owned());
        assert_eq!(substitute("x${A}y", &lookup).unwrap(), "x1y");
        assert_eq!(substitute("$${A} $5", &lookup).unwrap(), "${A} $5");
        assert_eq!(
            substitute("${B}", &lookup),
            Err(EnvProblem::Unset("B".into()))
        );
        assert!(matches!(
            substitute("${A", &lookup),
            Err(EnvProblem::Malformed(_))
        ));
        assert!(matches!(
            substitute("${1A}", &lookup),
            Err(EnvProblem::Malformed(_))
        ));
    }

    #[test]
    fn script_errors_point_into_the_yaml_file() {
        // The error is on the script's third line, which is line 7 of the file.
        let text =
            "name: lead\non:\n  webhook: {}\nscript: |\n  let a = 1;\n  let b = 2;\n  let c = ;\n";
        let d = only_error(text);
        assert!(d.message.starts_with("script error"), "{}", d.message);
        assert_eq!(d.line, 7);
        assert_eq!(d.column, 11);
        assert_eq!(d.rule.as_deref(), Some("lead"));
        assert!(d.render().contains("let c = ;"));
    }

    #[test]
    fn undefined_variables_are_caught_at_load() {
        let d = only_error(
            "name: lead\non:\n  webhook: {}\nscript: |\n  clients::tag(client, \"x\");\n",
        );
        assert_eq!(d.line, 5);
        assert!(d.message.contains("client"), "{}", d.message);
    }

    #[test]
    fn unknown_module_functions_are_caught_at_load() {
        let d = only_error(
            "name: lead\non:\n  webhook: {}\nscript: |\n  let c = clients::upsret(#{});\n",
        );
        assert_eq!((d.line, d.column), (5, 20));
        assert!(
            d.message.contains("unknown function `clients::upsret`"),
            "{}",
            d.message
        );
        assert!(d.help.unwrap().contains("clients::upsert"));
        let d = only_error("name: lead\non:\n  webhook: {}\nscript: |\n  files::read(\"x\");\n");
        assert!(
            d.message.contains("unknown module `files`"),
            "{}",
            d.message
        );
    }

    #[test]
    fn eval_and_import_do_not_compile() {
        let (rule, errors) =
            load_text("name: lead\non:\n  webhook: {}\nscript: |\n  eval(\"1\");\n");
        assert!(rule.is_none() && !errors.is_empty());
        let (rule, errors) =
            load_text("name: lead\non:\n  webhook: {}\nscript: |\n  import \"x\" as y;\n");
        assert!(rule.is_none() && !errors.is_empty());
    }

    #[test]
    fn when_is_compiled_at_load() {
        let d = only_error(
            "name: lead\non:\n  webhook: {}\nwhen: event.body.email !=\nscript: \"let x = 1;\"\n",
        );
        assert_eq!(d.line, 4);
    }

    #[test]
    fn bad_durations_and_limits() {
        let d = only_error(
            "name: lead\non:\n  webhook: {}\nlimits:\n  timeout: soon\nscript: \"let x = 1;\"\n",
        );
        assert!(d.message.contains("expected a duration"), "{}", d.message);
        let d = only_error(
            "name: lead\non:\n  webhook: {}\nlimits:\n  timeout: 2h\nscript: \"let x = 1;\"\n",
        );
        assert!(d.message.contains("from 1ms to 5m"), "{}", d.message);
        let d = only_error(
            "name: lead\non:\n  webhook: {}\nlimits:\n  max_api_calls: 0\nscript: \"let x = 1;\"\n",
        );
        assert!(d.message.contains("from 1 to"), "{}", d.message);
    }

    #[test]
    fn max_memory_is_a_size_within_bounds() {
        let (rule, errors) = load_text(GOOD);
        assert!(errors.is_empty(), "{errors:#?}");
        assert_eq!(rule.unwrap().limits.max_memory, 256 << 20);
        let with = |size: &str| {
            format!(
                "name: lead\non:\n  webhook: {{}}\nlimits:\n  max_memory: {size}\nscript: \"let x = 1;\"\n"
            )
        };
        let (rule, errors) = load_text(&with("64MiB"));
        assert!(errors.is_empty(), "{errors:#?}");
        assert_eq!(rule.unwrap().limits.max_memory, 64 << 20);
        let (rule, _) = load_text(&with("2GiB"));
        assert_eq!(rule.unwrap().limits.max_memory, 2 << 30);

        let d = only_error(&with("512KiB"));
        assert_eq!((d.line, d.column), (5, 15));
        assert!(
            d.message.contains("from 1MiB to 16GiB, found \"512KiB\""),
            "{}",
            d.message
        );
        let d = only_error(&with("32GiB"));
        assert!(d.message.contains("from 1MiB to 16GiB"), "{}", d.message);
        let d = only_error(&with("lots"));
        assert_eq!((d.line, d.column), (5, 15));
        assert!(d.message.contains("such as 64MiB"), "{}", d.message);
        let d = only_error(&with("64TB"));
        assert!(d.message.contains("KiB, MiB or GiB"), "{}", d.message);
    }

    #[test]
    fn triggers_must_be_exactly_one() {
        let d = only_error("name: lead\non: {}\nscript: \"let x = 1;\"\n");
        assert!(d.message.contains("names no trigger"), "{}", d.message);
        let d = only_error(
            "name: lead\non:\n  webhook: {}\n  schedule:\n    cron: '* * * * *'\nscript: \"let x = 1;\"\n",
        );
        assert!(d.message.contains("both"), "{}", d.message);
    }

    /// A scheduled rule with the given lines under `on.schedule`.
    fn scheduled(lines: &str) -> String {
        format!("name: nightly\non:\n  schedule:\n{lines}script: \"let x = 1;\"\n")
    }

    #[test]
    fn a_schedule_loads_with_its_defaults() {
        let (rule, errors) = load_text(&scheduled("    cron: '30 2 * * *'\n"));
        assert!(errors.is_empty(), "{errors:#?}");
        let rule = rule.unwrap();
        let schedule = rule.schedule().unwrap();
        assert_eq!(schedule.cron(), "30 2 * * *");
        assert_eq!(schedule.timezone(), chrono_tz::Tz::UTC);
        assert_eq!(schedule.overlap, Overlap::Skip);
        assert_eq!(schedule.catch_up, CatchUp::Latest);
        assert!(rule.webhook().is_none());
        assert!(
            rule.warnings.is_empty(),
            "a schedule is not an open endpoint"
        );

        let (rule, errors) = load_text(&scheduled(
            "    cron: \"@daily\"\n    timezone: Australia/Lord_Howe\n    overlap: queue\n    catch_up: none\n",
        ));
        assert!(errors.is_empty(), "{errors:#?}");
        let rule = rule.unwrap();
        let schedule = rule.schedule().unwrap();
        assert_eq!(schedule.timezone(), chrono_tz::Tz::Australia__Lord_Howe);
        assert_eq!(schedule.overlap, Overlap::Queue);
        assert_eq!(schedule.catch_up, CatchUp::None);
    }

    #[test]
    fn cron_errors_point_into_the_expression() {
        // Plain scalar: the value starts at column 11, `32` four characters in.
        let d = only_error(&scheduled("    cron: 0 0 32 * *\n"));
        assert_eq!((d.line, d.column), (4, 15), "{d:?}");
        assert!(
            d.message
                .contains("invalid cron expression `0 0 32 * *`: day-of-month 32 is out of range"),
            "{}",
            d.message
        );
        assert_eq!(d.rule.as_deref(), Some("nightly"));
        // Quoted: one column further, past the quote.
        let d = only_error(&scheduled("    cron: \"0 0 * * mon-fry\"\n"));
        assert_eq!((d.line, d.column), (4, 24), "{d:?}");
        assert!(d.message.contains("found `fry`"), "{}", d.message);
        assert!(d.render().contains("mon-fry"));
        let d = only_error(&scheduled("    cron: '0 0 * *'\n"));
        assert!(d.message.contains("expected 5 fields"), "{}", d.message);
        assert!(d.help.unwrap().contains("30 2 * * *"));
        let d = only_error(&scheduled("    cron: '@sometimes'\n"));
        assert!(d.message.contains("unknown cron macro"), "{}", d.message);
    }

    #[test]
    fn a_schedule_that_never_fires_is_an_error() {
        let d = only_error(&scheduled("    cron: '0 0 30 2 *'\n"));
        assert_eq!((d.line, d.column), (4, 11));
        assert!(
            d.message
                .contains("`0 0 30 2 *` never fires: day 30 never occurs in February"),
            "{}",
            d.message
        );
        let d = only_error(&scheduled("    cron: '0 0 0 1 1 * 2001'\n"));
        assert!(d.message.contains("never fires"), "{}", d.message);
        let (rule, errors) = load_text(&scheduled("    cron: '0 0 29 2 *'\n"));
        assert!(rule.is_some() && errors.is_empty(), "{errors:#?}");
    }

    #[test]
    fn unknown_time_zones_suggest_the_nearest() {
        let d = only_error(&scheduled(
            "    cron: '30 2 * * *'\n    timezone: America/Denvr\n",
        ));
        assert_eq!((d.line, d.column), (5, 15));
        assert!(
            d.message.contains("unknown time zone `America/Denvr`"),
            "{}",
            d.message
        );
        assert!(d.help.unwrap().contains("did you mean `America/Denver`?"));
        let d = only_error(&scheduled(
            "    cron: '30 2 * * *'\n    timezone: europe/london\n",
        ));
        assert!(d.help.unwrap().contains("`Europe/London`"));
    }

    #[test]
    fn overlap_and_catch_up_take_their_words_only() {
        let d = only_error(&scheduled("    cron: '30 2 * * *'\n    overlap: wait\n"));
        assert_eq!((d.line, d.column), (5, 14));
        assert!(
            d.message.contains("expected skip or queue, found `wait`"),
            "{}",
            d.message
        );
        let d = only_error(&scheduled("    cron: '30 2 * * *'\n    catch_up: all\n"));
        assert_eq!((d.line, d.column), (5, 15));
        assert!(
            d.message.contains("expected none or latest, found `all`"),
            "{}",
            d.message
        );
        let d = only_error(&scheduled("    cron: '30 2 * * *'\n    catchup: none\n"));
        assert!(d.help.unwrap().contains("did you mean `catch_up`?"));
    }

    #[test]
    fn every_schedule_problem_is_reported_at_once() {
        let (rule, errors) = load_text(&scheduled(
            "    cron: '61 * * * *'\n    timezone: Nowhere/City\n    overlap: maybe\n    catch_up: some\n",
        ));
        assert!(rule.is_none());
        assert_eq!(errors.len(), 4, "{errors:#?}");
        let lines: Vec<usize> = errors.iter().map(|d| d.line).collect();
        assert_eq!(lines, [4, 5, 6, 7]);
    }

    #[test]
    fn script_and_script_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("scripts")).unwrap();
        std::fs::write(dir.path().join("scripts/a.rhai"), "let x = 1;\nlet y = ;\n").unwrap();
        let path = dir.path().join("a.yaml");
        std::fs::write(
            &path,
            "name: a\non:\n  webhook: {}\nscript_file: scripts/a.rhai\n",
        )
        .unwrap();
        let (_, diagnostics) = load_file(&path, &no_env);
        let error = diagnostics.iter().find(|d| d.is_error()).unwrap();
        assert!(error.file.ends_with("scripts/a.rhai"), "{error:?}");
        assert_eq!(error.line, 2);

        std::fs::write(
            &path,
            "name: a\non:\n  webhook: {}\nscript_file: missing.rhai\n",
        )
        .unwrap();
        let (_, diagnostics) = load_file(&path, &no_env);
        assert!(
            diagnostics
                .iter()
                .any(|d| d.message.contains("cannot read script file"))
        );

        let d = only_error(
            "name: lead\non:\n  webhook: {}\nscript: \"let x = 1;\"\nscript_file: y.rhai\n",
        );
        assert!(d.message.contains("both"), "{}", d.message);
    }

    #[test]
    fn a_folder_reports_every_file_and_clashes_between_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "a.yaml",
            "name: lead\non:\n  webhook:\n    path: /hooks/x\nscript: \"let x = 1;\"\n",
        );
        write(
            "b.yaml",
            "name: lead\non:\n  webhook:\n    path: /hooks/y\nscript: \"let x = 1;\"\n",
        );
        write(
            "c.yaml",
            "name: other\non:\n  webhook:\n    path: /hooks/x\nscript: \"let x = 1;\"\n",
        );
        write("d.yaml", "name: broken\non:\n  webhook: {}\nscirpt: x\n");
        write("e.yaml", "name: [\n");
        write("notes.txt", "not a rule");
        let report = load_dir(dir.path(), &no_env).unwrap();
        assert_eq!(report.files, 5);
        let set = RuleSet::from_report(report);
        let errors: Vec<_> = set.errors().collect();
        assert_eq!(set.rules().len(), 1, "only a.yaml's rule loads");
        assert_eq!(errors.len(), 4, "{errors:#?}");
        assert!(
            errors
                .iter()
                .any(|d| d.message.contains("duplicate rule name `lead`"))
        );
        assert!(
            errors
                .iter()
                .any(|d| d.message.contains("already used by rule `lead`"))
        );
        assert!(errors.iter().any(|d| d.file.ends_with("d.yaml")));
        assert!(errors.iter().any(|d| d.file.ends_with("e.yaml")));
    }

    #[test]
    fn a_file_that_is_not_yaml_still_names_the_path_its_file_name_gives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("open-house.yaml");
        std::fs::write(&path, "name: open-house\non: [\n").unwrap();
        assert_eq!(intended_path(&path).as_deref(), Some("/hooks/open-house"));
        // A name that is no rule name gives no path.
        let odd = dir.path().join("Odd Name.yaml");
        std::fs::write(&odd, "on: [\n").unwrap();
        assert_eq!(intended_path(&odd), None);
    }

    #[test]
    fn a_second_document_is_refused() {
        let d = only_error("name: a\non:\n  webhook: {}\nscript: \"let x = 1;\"\n---\nname: b\n");
        assert!(d.message.contains("second YAML document"), "{}", d.message);
    }

    #[test]
    fn vars_resolve_environment_variables() {
        let (rule, errors) = load_text(
            "name: lead\non:\n  webhook: {}\nvars:\n  key: ${FORM_SECRET}\n  list: [\"$${x}\"]\nscript: \"let x = 1;\"\n",
        );
        assert!(errors.is_empty(), "{errors:#?}");
        let rule = rule.unwrap();
        assert_eq!(rule.vars["key"], "s3cret");
        assert_eq!(rule.vars["list"][0], "${x}");
    }

    #[test]
    fn verification_schemes_load_and_are_checked() {
        let base = "name: lead\non:\n  webhook:\n    verify:\n";
        let script = "script: \"let x = 1;\"\n";
        let (rule, errors) = load_text(&format!(
            "{base}      allow_ips: [192.0.2.0/24, 127.0.0.1]\n      token: {{ secret: [\"${{FORM_SECRET}}\", two], query: key }}\n      standard_webhooks:\n        secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n      basic: {{ username: u, password: p }}\n{script}"
        ));
        assert!(errors.is_empty(), "{errors:#?}");
        let rule = rule.unwrap();
        let v = rule.webhook().unwrap().verify.clone().unwrap();
        assert_eq!(v.allow_ips.len(), 2);
        assert_eq!(v.token.unwrap().secrets.len(), 2);
        assert!(v.standard.is_some() && v.basic.is_some());
        assert!(rule.warnings.is_empty(), "a verified endpoint is not open");

        let d = only_error(&format!("{base}      allow_ips: [not-an-ip]\n{script}"));
        assert!(d.message.contains("CIDR"), "{}", d.message);
        let d = only_error(&format!("{base}      token: {{ secret: x }}\n{script}"));
        assert!(
            d.message.contains("exactly one of `header` or `query`"),
            "{}",
            d.message
        );
        let d = only_error(&format!(
            "{base}      standard_webhooks: {{ secret: \"whsec_!!\" }}\n{script}"
        ));
        assert!(d.message.contains("whsec_"), "{}", d.message);
        let d = only_error(&format!(
            "{base}      hmac: {{ secret: x, header: X-Sig, algorithm: md5 }}\n{script}"
        ));
        assert!(
            d.message.contains("sha1, sha256 or sha512"),
            "{}",
            d.message
        );
        let d = only_error(
            &format!("{base}      {{}}\n{script}").replace("verify:\n      {}", "verify: {}"),
        );
        assert!(
            d.message.contains("names no verification scheme"),
            "{}",
            d.message
        );
    }
}
