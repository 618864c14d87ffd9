//! The command line: `serve`, `validate`, `test`, `run`, `backtest`, `schema`, `schedule`,
//! `replay`, `clients` and `sim`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use serde_json::{Map, Value, json};

use crate::clients::session::{Mode, Session};
use crate::clients::{ListQuery, Sort};
use crate::event::Event;
use crate::rules::{self, RuleSet, load};
use crate::script::{self, RunStatus};
use crate::settings::{Settings, Workspace};
use crate::triggers::decode;

/// `println!` that hands a failed write (a closed pipe: `clientrules ... | head`) back
/// to the caller as an error instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)?
    };
}

#[derive(Debug, Parser)]
#[command(
    name = "clientrules",
    version,
    about = "Rules that keep Spectora client records in order"
)]
pub struct Cli {
    /// A settings file (default: clientrules.yaml in the working folder, when there is
    /// one); flags and CLIENTRULES_* variables win over it.
    #[arg(long, global = true, env = "CLIENTRULES_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: webhooks in, rules run, clients updated.
    Serve {
        #[command(flatten)]
        settings: Settings,
    },
    /// Check rule files and report every problem.
    Validate {
        /// A folder of rule files, or one rule file (default: --rules).
        dir: Option<PathBuf>,
        /// Folder of rule files.
        #[arg(long, env = "CLIENTRULES_RULES", default_value = "./rules")]
        rules: PathBuf,
    },
    /// Run the tests kept in rule files.
    Test {
        /// Rule files or folders (default: the rules setting).
        paths: Vec<PathBuf>,
        /// Folder of rule files.
        #[arg(long, env = "CLIENTRULES_RULES", default_value = "./rules")]
        rules: PathBuf,
        /// The region of phones written without a country code.
        #[arg(long, env = "CLIENTRULES_PHONE_REGION", default_value = "US")]
        phone_region: String,
    },
    /// Run one rule on one event, without the server.
    Run {
        /// The rule's name.
        rule: String,
        /// A JSON or YAML file with the event: `body`, and optionally `headers`, `query`.
        #[arg(long, conflicts_with = "body")]
        event: Option<PathBuf>,
        /// A raw request body, decoded as a webhook delivery would be.
        #[arg(long)]
        body: Option<PathBuf>,
        /// The media type of `--body` (default: from the file's extension).
        #[arg(long, requires = "body")]
        content_type: Option<String>,
        /// Record the writes as a plan instead of making them.
        #[arg(long)]
        dry_run: bool,
        /// Print the run record as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        workspace: Workspace,
    },
    /// Show the next fire times of scheduled rules, in each rule's zone and in UTC.
    Schedule {
        /// Only this rule (default: every scheduled rule).
        rule: Option<String>,
        /// Start after this instant, RFC 3339 (default: now).
        #[arg(long, value_parser = parse_instant)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// How many fire times a rule.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
        next: u16,
        /// Print a JSON array of `{rule, local, utc, ...}`.
        #[arg(long)]
        json: bool,
        /// Folder of rule files.
        #[arg(long, env = "CLIENTRULES_RULES", default_value = "./rules")]
        rules: PathBuf,
    },
    /// Print the JSON Schema of rule files, for editors with a YAML language server.
    Schema,
    /// Run the stored events of a rule through the rule as it is on disk now, without
    /// writing, and report where the outcome differs from the recorded runs.
    Backtest {
        /// The rule's name.
        rule: String,
        /// Only events received within this long before now, such as 7d or 12h.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// The most events to compare, newest first (at most 10000).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        workspace: Workspace,
    },
    /// Read clients on the configured backend.
    Clients {
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// Serve a local stand-in for the Spectora Clients API.
    Sim(SimArgs),
    /// Run stored events again, as new runs linked to the old ones, by the rules as
    /// they are now. A running service picks the new jobs up within a second.
    Replay {
        /// The event to run again (for every rule that ran it, or only --rule).
        #[arg(required_unless_present = "dead")]
        event: Option<String>,
        /// The rule to run it for; with --dead, the rule whose dead letters to replay.
        #[arg(long, required_if_eq("dead", "true"))]
        rule: Option<String>,
        /// Replay every dead letter of --rule.
        #[arg(long, conflicts_with = "event")]
        dead: bool,
        /// The most dead letters to replay at once.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[command(flatten)]
        workspace: Workspace,
    },
}

/// The simulator's flags.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: std::net::SocketAddr,
    /// An API key it accepts; each key is one company. Repeat for several.
    #[arg(long = "key", required = true)]
    pub keys: Vec<String>,
    /// Folder of its database; without one, clients live in memory.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A JSON file of clients to load at start: an array (for the first key) or an
    /// object of arrays by key.
    #[arg(long)]
    pub seed: Option<PathBuf>,
    /// Milliseconds to wait before every answer.
    #[arg(long, default_value_t = 0)]
    pub latency: u64,
    /// The share of requests, from 0 to 1, answered with a server error.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fail_rate: f64,
    /// The status of those server errors.
    #[arg(long, default_value_t = 503, value_parser = clap::value_parser!(u16).range(500..=599))]
    pub fail_status: u16,
    /// Requests a minute each key may make before it is answered 429; 0 for no limit.
    #[arg(long, default_value_t = 0)]
    pub rate_limit: u32,
    /// Answer 429 without a Retry-After header.
    #[arg(long)]
    pub no_retry_after: bool,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|p| (0.0..=1.0).contains(p))
        .ok_or_else(|| format!("expected a share from 0 to 1, such as 0.1, found {text:?}"))
}

impl SimArgs {
    pub fn config(&self) -> crate::sim::SimConfig {
        let mut config = crate::sim::SimConfig::new(self.keys.iter().cloned());
        config.data = self.data.clone();
        config.seed = self.seed.clone();
        config.latency = std::time::Duration::from_millis(self.latency);
        config.fail_rate = self.fail_rate;
        config.fail_status = self.fail_status;
        config.rate_limit = self.rate_limit;
        config.retry_after = !self.no_retry_after;
        config
    }
}

#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// List clients.
    List {
        #[arg(long)]
        fulltext: Option<String>,
        /// Only clients with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// first_name, last_name or last_first_name, `-` first for descending.
        #[arg(long, allow_hyphen_values = true)]
        sort: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        workspace: Workspace,
    },
    /// Show one client.
    Get {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        workspace: Workspace,
    },
}

fn replay(
    workspace: &Workspace,
    event: Option<String>,
    rule: Option<String>,
    dead: bool,
    limit: usize,
) -> anyhow::Result<ExitCode> {
    // A replay runs the rule as it is now: it must load.
    if let Some(rule) = &rule {
        loaded_rule(workspace, rule)?;
    }
    let rules = load_rules_or_fail(workspace)?;
    let (store, _) = crate::server::open_data(workspace, crate::store::Grouping::Shared)?;
    let jobs = if dead {
        let Some(rule) = rule else {
            bail!("--dead needs --rule RULE: the rule whose dead letters to replay");
        };
        use crate::store::Store as _;
        let jobs = store.replay_dead(&rule, limit, rules.attempts_of(&rule))?;
        if jobs.is_empty() {
            outln!("no dead letters of rule {rule} to replay");
            return Ok(ExitCode::SUCCESS);
        }
        jobs
    } else {
        let Some(event) = event else {
            bail!("give an event id, or --dead --rule RULE");
        };
        use crate::store::Store as _;
        let jobs = store.replay_event(&event, rule.as_deref(), &|r| rules.attempts_of(r))?;
        if jobs.is_empty() {
            let known = store.event(&event).ok().flatten().is_some();
            match &rule {
                Some(rule) if known => bail!(
                    "rule {rule} never took event {event}: only a rule that took an event \
                     runs it again (its checks never passed on it)"
                ),
                Some(rule) => bail!(
                    "no event {event} in {} to replay for rule {rule}",
                    workspace.data.display()
                ),
                None => bail!(
                    "no event {event} with jobs in {} to replay",
                    workspace.data.display()
                ),
            }
        }
        jobs
    };
    outln!(
        "queued {} job{}: {}",
        jobs.len(),
        plural(jobs.len()),
        jobs.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs a command other than `serve`; returns the process exit code.
pub fn run_command(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { .. } | Command::Sim(_) => bail!("this command runs on the async runtime"),
        Command::Validate { dir, rules } => validate(&dir.unwrap_or(rules)),
        Command::Test {
            paths,
            rules,
            phone_region,
        } => {
            crate::text::set_default_region(&phone_region)?;
            let paths = if paths.is_empty() { vec![rules] } else { paths };
            test_rules(&paths)
        }
        Command::Run {
            rule,
            event,
            body,
            content_type,
            dry_run,
            json,
            workspace,
        } => run_rule(&workspace, &rule, event, body, content_type, dry_run, json),
        Command::Schedule {
            rule,
            from,
            next,
            json,
            rules,
        } => schedule(&rules, rule.as_deref(), from, usize::from(next), json),
        Command::Clients { command } => clients(command),
        Command::Replay {
            event,
            rule,
            dead,
            limit,
            workspace,
        } => replay(&workspace, event, rule, dead, limit),
        Command::Backtest {
            rule,
            since,
            limit,
            json,
            workspace,
        } => backtest_rule(&workspace, &rule, since, limit, json),
        Command::Schema => {
            let schema = rules::schema::rule_file_schema();
            outln!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn validate(dir: &Path) -> anyhow::Result<ExitCode> {
    // A folder of rule files, or one file.
    let report = if dir.is_file() {
        load::load_paths(&[dir.to_owned()], &load::process_env)
    } else {
        load::load_dir(dir, &load::process_env)
            .with_context(|| format!("cannot read the rules folder {}", dir.display()))?
    };
    let files = report.files;
    let set = RuleSet::from_report(report);
    let mut err = std::io::stderr().lock();
    for d in &set.diagnostics {
        let _ = write!(err, "{}", d.render());
        let _ = writeln!(err);
    }
    let errors = set.errors().count();
    let warnings = set.diagnostics.len() - errors;
    if errors > 0 {
        let _ = writeln!(
            err,
            "{errors} error{} and {warnings} warning{} in {files} rule file{} of {}",
            plural(errors),
            plural(warnings),
            plural(files),
            dir.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    outln!(
        "{} rule{} in {files} file{} of {}: ok ({warnings} warning{})",
        set.rules().len(),
        plural(set.rules().len()),
        plural(files),
        dir.display(),
        plural(warnings)
    );
    Ok(ExitCode::SUCCESS)
}

fn test_rules(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut report = load::LoadReport::default();
    for path in paths {
        if path.is_dir() {
            let mut part = load::load_dir(path, &load::process_env)
                .with_context(|| format!("cannot read the rules folder {}", path.display()))?;
            report.files += part.files;
            report.rules.append(&mut part.rules);
            report.diagnostics.append(&mut part.diagnostics);
        } else {
            let (loaded, mut diagnostics) = load::load_file(path, &load::process_env);
            report.files += 1;
            report.rules.extend(loaded);
            report.diagnostics.append(&mut diagnostics);
        }
    }
    let set = RuleSet::from_report(report);
    let load_errors: Vec<_> = set.errors().collect();
    for d in &load_errors {
        eprint!("{}", d.render());
    }

    let cases: Vec<(&crate::rules::Rule, &crate::rules::TestSpec)> = set
        .rules()
        .iter()
        .flat_map(|rule| rule.tests.iter().map(move |t| (rule.as_ref(), t)))
        .collect();
    let untested: Vec<&str> = set
        .rules()
        .iter()
        .filter(|r| r.tests.is_empty())
        .map(|r| r.name.as_str())
        .collect();
    outln!("\nrunning {} test{}", cases.len(), plural(cases.len()));

    // Tests are independent (each has its own store): run them on every core.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.min(cases.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((rule, test)) = cases.get(i) else {
                        break;
                    };
                    let result = rules::testing::run_test(rule, test);
                    // A closed pipe is noticed by the summary's write, after the tests.
                    let _ = writeln!(
                        std::io::stdout().lock(),
                        "test {} › {} ... {}",
                        result.rule,
                        result.test,
                        if result.passed() { "ok" } else { "FAILED" }
                    );
                    results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(result);
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    let failed: Vec<_> = results.iter().filter(|r| !r.passed()).collect();
    if !failed.is_empty() {
        outln!("\nfailures:");
        for result in &failed {
            outln!("\n---- {} › {} ----", result.rule, result.test);
            for failure in &result.failures {
                outln!("  {failure}");
            }
        }
    }
    if !untested.is_empty() {
        outln!("\nrules without tests: {}", untested.join(", "));
    }
    let passed = results.len() - failed.len();
    let ok = failed.is_empty() && load_errors.is_empty();
    outln!(
        "\ntest result: {}. {passed} passed; {} failed{}",
        if ok { "ok" } else { "FAILED" },
        failed.len(),
        if load_errors.is_empty() {
            String::new()
        } else {
            format!(
                "; {} rule file error{}",
                load_errors.len(),
                plural(load_errors.len())
            )
        }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn parse_instant(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| {
            format!("expected an RFC 3339 time such as 2025-03-08T12:00:00Z, found {text:?}: {e}")
        })
}

/// `schedule`: the next fire times of the scheduled rules of a folder.
fn schedule(
    dir: &Path,
    only: Option<&str>,
    from: Option<chrono::DateTime<chrono::Utc>>,
    next: usize,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    use crate::triggers::preview;

    let report = load::load_dir(dir, &load::process_env)
        .with_context(|| format!("cannot read the rules folder {}", dir.display()))?;
    let set = RuleSet::from_report(report);
    for d in set.errors() {
        eprint!("{}", d.render());
    }
    let scheduled: Vec<_> = set
        .rules()
        .iter()
        .filter_map(|r| r.schedule().map(|s| (r, s)))
        .filter(|(r, _)| only.is_none_or(|name| r.name == name))
        .collect();
    if let Some(name) = only
        && scheduled.is_empty()
    {
        let names: Vec<&str> = set
            .rules()
            .iter()
            .filter(|r| r.schedule().is_some())
            .map(|r| r.name.as_str())
            .collect();
        let what = if set.get(name).is_some() {
            "is not a scheduled rule"
        } else {
            "is not loaded"
        };
        bail!(
            "rule {name} {what} in {} (scheduled rules: {})",
            dir.display(),
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        );
    }
    let from = from.unwrap_or_else(chrono::Utc::now);
    if as_json {
        let all: Vec<preview::Upcoming> = scheduled
            .iter()
            .flat_map(|(r, s)| preview::upcoming(&r.name, s, from, next))
            .collect();
        outln!("{}", serde_json::to_string_pretty(&all)?);
    } else if scheduled.is_empty() {
        outln!("no scheduled rules in {}", dir.display());
    } else {
        for (i, (r, s)) in scheduled.iter().enumerate() {
            if i > 0 {
                outln!();
            }
            let ticks = preview::upcoming(&r.name, s, from, next);
            write!(
                std::io::stdout().lock(),
                "{}",
                preview::render(&r.name, s, &ticks)
            )?;
        }
    }
    Ok(if set.has_errors() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The rule of this name as it loads from the rules folder now; otherwise the folder's
/// errors are printed and the error names the rules that did load.
fn loaded_rule(workspace: &Workspace, name: &str) -> anyhow::Result<Arc<rules::Rule>> {
    let set = load_rules_or_fail(workspace)?;
    if let Some(rule) = set.get(name) {
        return Ok(rule.clone());
    }
    for d in set.errors() {
        eprint!("{}", d.render());
    }
    let names: Vec<&str> = set.rules().iter().map(|r| r.name.as_str()).collect();
    bail!(
        "no rule named {name} loaded from {} (loaded: {})",
        workspace.rules.display(),
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    );
}

fn load_rules_or_fail(workspace: &Workspace) -> anyhow::Result<RuleSet> {
    let report = load::load_dir(&workspace.rules, &load::process_env)
        .with_context(|| format!("cannot read the rules folder {}", workspace.rules.display()))?;
    Ok(RuleSet::from_report(report))
}

fn read_event(
    event: Option<PathBuf>,
    body: Option<PathBuf>,
    content_type: Option<String>,
    path: &str,
) -> anyhow::Result<(Event, UploadedFiles)> {
    if let Some(file) = event {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read the event file {}", file.display()))?;
        let value: Value = serde_yaml::from_str(&text)
            .with_context(|| format!("the event file {} is not JSON or YAML", file.display()))?;
        let Value::Object(spec) = value else {
            bail!(
                "the event file {} must hold a map with `body`",
                file.display()
            );
        };
        const KEYS: &[&str] = &["body", "headers", "query", "path", "method"];
        if !spec.contains_key("body") {
            let found: Vec<&str> = spec.keys().map(String::as_str).take(5).collect();
            bail!(
                "the event file {} must hold a map with `body` (and optionally `headers`, \
                 `query`), found the keys {}; to run a raw payload as it was delivered, \
                 use --body {} instead",
                file.display(),
                found.join(", "),
                file.display()
            );
        }
        if let Some(unknown) = spec.keys().find(|k| !KEYS.contains(&k.as_str())) {
            bail!(
                "the event file {} has an unknown key `{unknown}`; expected {}",
                file.display(),
                KEYS.join(", ")
            );
        }
        let mut event = Event::manual(&spec);
        if event.path.is_empty() {
            event.path = path.to_owned();
        }
        return Ok((event, UploadedFiles::new()));
    }
    let Some(file) = body else {
        bail!("give the event with --event FILE (a map with `body`) or --body FILE (a raw body)");
    };
    let raw = Bytes::from(
        std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?,
    );
    let media = content_type.unwrap_or_else(|| {
        match file.extension().and_then(|e| e.to_str()) {
            Some("json") => "application/json",
            Some("txt") | Some("form") => "application/x-www-form-urlencoded",
            _ => "text/plain",
        }
        .to_owned()
    });
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let decoded = runtime
        .block_on(decode::decode(
            Some(&media),
            raw.clone(),
            &decode::DecodeLimits::default(),
        ))
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let mut spec = Map::new();
    spec.insert("body".into(), decoded.body);
    let mut event = Event::manual(&spec);
    event.raw = raw;
    event.path = path.to_owned();
    event
        .headers
        .insert("content-type".into(), Value::String(media));
    // File parts stay in memory for the run, as the store holds them for a delivery.
    let mut files = UploadedFiles::new();
    for file in decoded.files {
        let id = Event::new_id();
        event.files.push(crate::event::FileMeta {
            id: id.clone(),
            field: file.field,
            filename: file.filename,
            content_type: file.content_type,
            size: file.bytes.len() as u64,
        });
        files.insert(id, file.bytes);
    }
    Ok((event, files))
}

/// The bytes of the files of an event read from the command line, by file id.
type UploadedFiles = std::collections::HashMap<String, Bytes>;

fn run_rule(
    workspace: &Workspace,
    name: &str,
    event: Option<PathBuf>,
    body: Option<PathBuf>,
    content_type: Option<String>,
    dry_run: bool,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    crate::text::set_default_region(&workspace.phone_region)?;
    let rule = loaded_rule(workspace, name)?;
    let path = rule.webhook().map(|w| w.path.clone()).unwrap_or_default();
    let (event, files) = match rule.schedule() {
        // A scheduled rule run by hand without an event gets a tick of now.
        Some(trigger) if event.is_none() && body.is_none() => {
            let now = chrono::Utc::now();
            let mut tick = crate::triggers::schedule::tick_event(trigger, now, now);
            tick.source = crate::event::Source::Manual;
            (tick, UploadedFiles::new())
        }
        _ => read_event(event, body, content_type, &path)?,
    };
    let (_, backend) = crate::server::open_data(workspace, crate::store::Grouping::Shared)?;
    let mode = if dry_run { Mode::Plan } else { Mode::Live };
    let session = Arc::new(
        Session::new(
            backend,
            mode,
            rule.limits.max_api_calls,
            rule.limits.max_changes,
        )
        .with_files(Arc::new(files)),
    );
    let outcome = script::run(&rule, &event.to_script_value(), session.clone(), None);
    let changes = session.changes();
    if as_json {
        let record = json!({
            "rule": rule.name,
            "event_id": event.id,
            "mode": mode,
            "status": outcome.status,
            "reason": outcome.reason,
            "duration_ms": outcome.duration.as_millis() as u64,
            "error": outcome.error,
            "logs": outcome.logs,
            "api_calls": session.calls(),
            "progress": session.progress(),
            "changes": if dry_run { Value::Null } else { serde_json::to_value(&changes)? },
            "plan": if dry_run { serde_json::to_value(&changes)? } else { Value::Null },
            "diff": changes.iter().map(|c| c.describe()).collect::<Vec<_>>(),
        });
        outln!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "rule {}: {}{} in {} ms{}",
            rule.name,
            outcome.status.as_str(),
            outcome
                .reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            outcome.duration.as_millis(),
            if dry_run {
                ", dry run: nothing was written"
            } else {
                ""
            }
        )?;
        if let Some(e) = &outcome.error {
            write!(out, "{}", render_run_error(&rule, e))?;
        }
        let calls = session.calls();
        writeln!(out, "api calls: {}", calls.len())?;
        let progress = session.progress();
        if progress.pages > 0 {
            writeln!(
                out,
                "progress: {} pages, {} clients seen, {} changed",
                progress.pages, progress.clients_seen, progress.changed
            )?;
        }
        if changes.is_empty() {
            writeln!(
                out,
                "{}",
                if dry_run {
                    "plan: no writes"
                } else {
                    "changes: none"
                }
            )?;
        } else {
            writeln!(out, "{}", if dry_run { "plan:" } else { "changes:" })?;
            for change in &changes {
                writeln!(out, "  {}", change.describe())?;
            }
        }
        for line in &outcome.logs {
            writeln!(out, "log {}: {}", line.level, line.message)?;
        }
    }
    Ok(if outcome.status == RunStatus::Failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn backtest_rule(
    workspace: &Workspace,
    name: &str,
    since: Option<std::time::Duration>,
    limit: usize,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    crate::text::set_default_region(&workspace.phone_region)?;
    let rule = loaded_rule(workspace, name)?;
    let from = match since {
        Some(window) => Some(
            chrono::Utc::now()
                - chrono::Duration::from_std(window)
                    .with_context(|| format!("--since {window:?} is too long"))?,
        ),
        None => None,
    };
    let (store, backend) = crate::server::open_data(workspace, crate::store::Grouping::Shared)?;
    let store: Arc<dyn crate::store::Store> = store;
    let report = crate::backtest::backtest(&rule, &store, backend, from, limit.clamp(1, 10_000))?;
    if as_json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }

    let mut out = std::io::stdout().lock();
    let window = from
        .map(|t| format!(" received since {}", t.format("%Y-%m-%d %H:%M UTC")))
        .unwrap_or_default();
    writeln!(
        out,
        "backtest of rule {} ({}) against {} stored event{}{window}",
        rule.name,
        rule.file.display(),
        report.events,
        plural(report.events)
    )?;
    if report.not_run > 0 {
        writeln!(
            out,
            "{} more event{} not run yet, left out",
            report.not_run,
            plural(report.not_run)
        )?;
    }
    if report.events == 0 {
        writeln!(out, "nothing to compare")?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{} the same, {} differ{}",
        report.same,
        report.differing(),
        if report.differing() == 1 { "s" } else { "" }
    )?;
    let mut counts: Vec<(&String, &usize)> = report.counts.iter().collect();
    counts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (kind, n) in counts {
        writeln!(
            out,
            "  {n} of {} events: {}",
            report.events,
            difference_words(kind)
        )?;
    }
    for example in &report.examples {
        let kinds: Vec<String> = example.kinds.iter().map(|k| difference_words(k)).collect();
        writeln!(
            out,
            "\nevent {} ({}): {}",
            example.event_id,
            example.received_at.format("%Y-%m-%d %H:%M:%S UTC"),
            kinds.join(", ")
        )?;
        for (side, effect) in [("recorded", &example.recorded), ("now", &example.now)] {
            writeln!(out, "  {side} ({}):", effect.status)?;
            if effect.lines.is_empty() {
                writeln!(out, "    no writes")?;
            }
            for line in &effect.lines {
                writeln!(out, "    {line}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A kind of difference in words: `tags differ`, `status differs`.
fn difference_words(kind: &str) -> String {
    match kind {
        "status" => "status differs".into(),
        "clients changed" => "the clients changed differ".into(),
        field if field.ends_with('s') => format!("{field} differ"),
        field => format!("{field} differs"),
    }
}

/// A run's error as the compiler-style report of a rule file: the line of the script
/// that failed with a marker under it, when the error has a position.
fn render_run_error(rule: &rules::Rule, error: &script::RunError) -> String {
    let origins = std::iter::once(&rule.script.origin).chain(rule.when.iter().map(|w| &w.origin));
    let source = origins
        .filter(|o| error.file.as_ref() == Some(&o.file))
        .map(|o| o.source.clone())
        .next();
    match (source, &error.file, error.line) {
        (Some(source), Some(file), Some(line)) => {
            let mut d = rules::Diagnostic::error(
                file,
                line,
                error.column.unwrap_or(1),
                error.message.clone(),
            )
            .with_source(source);
            d.rule = Some(rule.name.clone());
            d.render()
        }
        _ => format!("error: {error}\n"),
    }
}

fn clients(command: ClientsCommand) -> anyhow::Result<ExitCode> {
    let workspace = match &command {
        ClientsCommand::List { workspace, .. } | ClientsCommand::Get { workspace, .. } => workspace,
    };
    // Reading the embedded clients of a folder that does not exist would only create
    // an empty one: most likely the command runs from the wrong place.
    if workspace.backend.kind() == crate::settings::BackendKind::Embedded
        && !workspace.data.exists()
    {
        bail!(
            "no data folder {}: run this from the folder where `serve` runs, or give --data DIR",
            workspace.data.display()
        );
    }
    let (_, backend) = crate::server::open_data(workspace, crate::store::Grouping::Shared)?;
    match command {
        ClientsCommand::List {
            fulltext,
            tag,
            sort,
            json: as_json,
            ..
        } => {
            let sort = match sort {
                Some(s) => Some(Sort::parse(&s).with_context(|| {
                    format!("expected --sort first_name, last_name or last_first_name, found {s}")
                })?),
                None => None,
            };
            let mut query = ListQuery::first_page();
            query.fulltext = fulltext;
            query.tags = tag.into_iter().collect();
            query.sort = sort;
            let mut all = Vec::new();
            loop {
                let page = backend.list(&query).map_err(|e| anyhow::anyhow!("{e}"))?;
                let empty = page.clients.is_empty();
                all.extend(page.clients);
                match page.next {
                    Some(next) if !empty && next > query.page => query.page = next,
                    _ => break,
                }
            }
            if as_json {
                let items: Vec<Value> = all.iter().map(|c| Value::Object(c.to_flat())).collect();
                outln!("{}", serde_json::to_string_pretty(&items)?);
            } else {
                print_table(&all)?;
            }
        }
        ClientsCommand::Get {
            id, json: as_json, ..
        } => {
            let Some(client) = backend.get(&id).map_err(|e| anyhow::anyhow!("{e}"))? else {
                eprintln!("no client with id {id}");
                return Ok(ExitCode::FAILURE);
            };
            if as_json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&Value::Object(client.to_flat()))?
                );
            } else {
                for (k, v) in client.to_flat() {
                    let text = match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    outln!("{k:>14}: {text}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(clients: &[crate::clients::Client]) -> std::io::Result<()> {
    if clients.is_empty() {
        outln!("no clients");
        return Ok(());
    }
    outln!(
        "{:<6} {:<24} {:<32} {:<16} TAGS",
        "ID",
        "NAME",
        "EMAIL",
        "PHONE"
    );
    for c in clients {
        let name = format!(
            "{} {}",
            c.str_attr("first_name").unwrap_or(""),
            c.str_attr("last_name").unwrap_or("")
        );
        outln!(
            "{:<6} {:<24} {:<32} {:<16} {}",
            c.id,
            name.trim(),
            c.str_attr("email").unwrap_or(""),
            ["phone", "mobile_phone", "home_phone"]
                .iter()
                .find_map(|k| c.str_attr(k).filter(|p| !p.is_empty()))
                .unwrap_or(""),
            c.tags().join(", ")
        );
    }
    outln!("{} client{}", clients.len(), plural(clients.len()));
    Ok(())
}
