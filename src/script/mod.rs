//! Rule scripts: compiling them at load with positions in the rule file, and running
//! them in the sandbox against a client session, producing a run's outcome.

pub mod convert;
pub mod engine;
pub mod helpers;
pub mod memory;
pub mod modules;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rhai::{AST, Dynamic, EvalAltResult, Position, Scope};
use serde::Serialize;
use serde_json::Value;

use crate::clients::session::Session;
use crate::rules::{Diagnostic, Rule};

/// Where a script's text sits, so that a position inside the script becomes a position
/// in the file the user edits.
#[derive(Debug, Clone)]
pub struct Origin {
    pub file: PathBuf,
    /// Lines before the script's first line.
    pub line_offset: usize,
    /// Columns before the script's text on each line (a block scalar's indentation).
    pub column_offset: usize,
    /// The whole file, for showing the offending line.
    pub source: Arc<str>,
}

impl Origin {
    /// The file line and column of a script position; `None` for no position.
    pub fn locate(&self, pos: Position) -> Option<(usize, usize)> {
        let line = pos.line()?;
        let column = pos.position().unwrap_or(1);
        Some((self.line_offset + line, self.column_offset + column))
    }
}

/// A compiled script or expression, with where it came from.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub ast: Arc<AST>,
    pub origin: Arc<Origin>,
}

/// Names every script sees in its scope; declared at compile time so that strict
/// variable checking reports a misspelt name at load.
const SCOPE_NAMES: &[&str] = &["event", "vars"];

fn compile_scope() -> Scope<'static> {
    let mut scope = Scope::new();
    for name in SCOPE_NAMES {
        // Plain variables, not constants: the optimizer would fold a constant's
        // placeholder value into the compiled script.
        scope.push_dynamic(*name, Dynamic::UNIT);
    }
    scope
}

/// Compiles a rule's script, checking the module functions it calls.
pub fn compile_script(text: &str, origin: Origin) -> Result<Compiled, Vec<Diagnostic>> {
    let engine = engine::compiler();
    match engine.compile_with_scope(&compile_scope(), text) {
        Ok(ast) => finish(ast, origin),
        Err(e) => Err(vec![parse_diagnostic(&origin, &e)]),
    }
}

/// Compiles a one-expression script (`when`, `dedupe`).
pub fn compile_expression(text: &str, origin: Origin) -> Result<Compiled, Vec<Diagnostic>> {
    let engine = engine::compiler();
    match engine.compile_expression_with_scope(&compile_scope(), text) {
        Ok(ast) => finish(ast, origin),
        Err(e) => Err(vec![parse_diagnostic(&origin, &e)]),
    }
}

fn finish(ast: AST, origin: Origin) -> Result<Compiled, Vec<Diagnostic>> {
    let problems: Vec<Diagnostic> = modules::unknown_calls(&ast)
        .into_iter()
        .map(|(pos, message, help)| {
            let (line, column) = origin.locate(pos).unwrap_or((origin.line_offset + 1, 1));
            let mut d = Diagnostic::error(&origin.file, line, column, message)
                .with_source(origin.source.clone());
            d.help = help;
            d
        })
        .collect();
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Compiled {
        ast: Arc::new(ast),
        origin: Arc::new(origin),
    })
}

fn parse_diagnostic(origin: &Origin, e: &rhai::ParseError) -> Diagnostic {
    let (line, column) = origin
        .locate(e.position())
        .unwrap_or((origin.line_offset + 1, 1));
    let message = format!("script error: {}", e.err_type());
    let mut d =
        Diagnostic::error(&origin.file, line, column, message).with_source(origin.source.clone());
    if let rhai::ParseErrorType::ModuleUndefined(name) = e.err_type() {
        d.message = format!("script error: unknown module `{name}`");
        d.help = Some("scripts can use the modules clients, log, json, text and time".into());
    }
    if let rhai::ParseErrorType::VariableUndefined(name) = e.err_type() {
        d.help = Some(if name == "client" || name == "clients" {
            format!("`{name}` is not defined here; scripts see `event` and `vars`")
        } else {
            format!("declare `{name}` with `let` first; scripts see `event` and `vars`")
        });
    }
    d
}

/// Evaluates an ingest expression (`dedupe`) on an event: a string or number is the
/// key, `()` means none. Blocking, but bounded by a small operations budget.
pub fn eval_key(expression: &Compiled, event: &Value) -> Result<Option<String>, String> {
    let mut scope = Scope::new();
    scope.push_constant_dynamic("event", convert::to_dynamic(event));
    scope.push_constant_dynamic("vars", Dynamic::UNIT);
    let evaluated = engine::with_expression_meter(|| {
        engine::expressions().eval_ast_with_scope::<Dynamic>(&mut scope, &expression.ast)
    });
    match evaluated {
        Ok(value) if value.is_unit() => Ok(None),
        Ok(value) if value.is_string() || value.is_int() || value.is_float() => {
            let key = value.to_string();
            Ok((!key.is_empty()).then_some(key))
        }
        Ok(value) => Err(format!(
            "expected a string or a number, found {}",
            value.type_name()
        )),
        Err(e) => match terminated_by_limit(&e) {
            Some(message) => Err(message),
            None => Err(engine::plain_message(&e)),
        },
    }
}

/// The message of a limit that ended an evaluation, wherever it was raised (inside a
/// closure the termination comes wrapped in the call).
fn terminated_by_limit(e: &EvalAltResult) -> Option<String> {
    match e {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _) => terminated_by_limit(inner),
        EvalAltResult::ErrorTerminated(token, _) => match engine::stop_of(token)? {
            Stop::Limit { message, .. } => Some(message),
            _ => None,
        },
        _ => None,
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Succeeded,
    Skipped,
    Failed,
}

impl RunStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Skipped => "skipped",
            RunStatus::Failed => "failed",
        }
    }
}

/// One line a script logged.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub level: &'static str,
    pub message: String,
}

/// Why a run failed, with where in the rule file.
#[derive(Debug, Clone, Serialize)]
pub struct RunError {
    pub message: String,
    /// The limit that ended the run, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let (Some(file), Some(line), Some(column)) = (&self.file, self.line, self.column) {
            write!(f, "{}:{line}:{column}: ", file.display())?;
        }
        f.write_str(&self.message)
    }
}

/// The outcome of running a rule on one event.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub status: RunStatus,
    /// The reason given to `skip()`, or why the `when` guard skipped the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
    /// Whether a failure is transient, so that the job is worth trying again.
    pub retryable: bool,
    pub logs: Vec<LogLine>,
    pub duration: Duration,
}

/// What ends a run early from inside a native function: `skip`, `fail`, a limit. Thrown
/// as a termination so that `try`/`catch` in a script cannot swallow it.
#[derive(Debug, Clone)]
pub(crate) enum Stop {
    Skip(String),
    Fail(String),
    Limit { limit: String, message: String },
    Timeout(Duration),
    Cancelled,
}

/// The stack of the thread a script runs on. Values a script builds can nest deeply
/// (`a = [a]` in a loop, up to the array size limit), and dropping, measuring or
/// serializing them recurses once a level: far past the 2 MiB of an ordinary thread.
/// The stack is reserved, not committed: only the pages a run touches cost memory.
const SCRIPT_STACK: usize = 512 * 1024 * 1024;

/// Runs a rule's `when` guard and script on an event, on a thread of its own with a
/// stack deep enough for any value the limits allow; a panic in the engine becomes a
/// failed run. Blocking: call it from a worker thread, never from the async runtime.
pub fn run(
    rule: &Rule,
    event: &Value,
    session: Arc<Session>,
    cancel: Option<Arc<AtomicBool>>,
) -> Outcome {
    let started = Instant::now();
    // A thread started by `with_script_stack` has the stack already; any other starts
    // one for the run.
    let ran = if DEEP_STACK.with(std::cell::Cell::get) {
        Ok(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
            || run_here(rule, event, session, cancel),
        )))
    } else {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name(format!("script-{}", rule.name))
                .stack_size(SCRIPT_STACK)
                .spawn_scoped(scope, || run_here(rule, event, session, cancel))
                .map(|thread| thread.join())
        })
    };
    let failure = match ran {
        Ok(Ok(outcome)) => return outcome,
        Ok(Err(_)) => {
            "the script engine failed on this run (a bug of clientrules, not of the rule)"
        }
        Err(_) => "no thread could be started for the script; the job will be tried again",
    };
    Outcome {
        status: RunStatus::Failed,
        reason: None,
        error: Some(RunError {
            message: failure.to_owned(),
            limit: None,
            file: Some(rule.file.clone()),
            line: None,
            column: None,
        }),
        retryable: true,
        logs: Vec::new(),
        duration: started.elapsed(),
    }
}

thread_local! {
    /// Whether this thread was started with [`SCRIPT_STACK`].
    static DEEP_STACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A thread builder for threads that run scripts one after another (the workers): they
/// get the deep stack once, and runs on them start no thread of their own.
pub fn with_script_stack<F, T>(
    builder: std::thread::Builder,
    f: F,
) -> std::io::Result<std::thread::JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    builder.stack_size(SCRIPT_STACK).spawn(move || {
        DEEP_STACK.with(|deep| deep.set(true));
        f()
    })
}

fn run_here(
    rule: &Rule,
    event: &Value,
    session: Arc<Session>,
    cancel: Option<Arc<AtomicBool>>,
) -> Outcome {
    let started = Instant::now();
    // Before anything of the run is allocated: the engine, the event's copy and every
    // value the script makes count against `limits.max_memory`.
    let memory = memory::Meter::start();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let sandbox = engine::Sandbox {
        limits: rule.limits,
        deadline: started + rule.limits.timeout,
        cancel,
        memory,
    };
    session.set_deadline(sandbox.deadline);
    if let Some(cancel) = &sandbox.cancel {
        session.set_cancel(cancel.clone());
    }
    let engine = engine::build(&sandbox, session.clone(), logs.clone());

    let mut scope = Scope::new();
    scope.push_constant_dynamic("event", convert::to_dynamic(event));
    scope.push_constant_dynamic(
        "vars",
        convert::to_dynamic(&Value::Object(rule.vars.clone())),
    );

    let mut outcome = Outcome {
        status: RunStatus::Succeeded,
        reason: None,
        error: None,
        retryable: false,
        logs: Vec::new(),
        duration: Duration::ZERO,
    };

    let guard = match &rule.when {
        Some(when) => match engine.eval_ast_with_scope::<Dynamic>(&mut scope, &when.ast) {
            Ok(value) => match value.as_bool() {
                Ok(true) => Ok(()),
                Ok(false) => Err(None),
                Err(found) => Err(Some(RunError {
                    message: format!("`when` must be true or false, found {found}"),
                    limit: None,
                    file: Some(when.origin.file.clone()),
                    line: Some(when.origin.line_offset + 1),
                    column: None,
                })),
            },
            Err(e) => Err(Some(describe_error(
                &e,
                when,
                &session,
                &sandbox,
                &mut outcome,
            ))),
        },
        None => Ok(()),
    };
    match guard {
        Ok(()) => match engine.run_ast_with_scope(&mut scope, &rule.script.ast) {
            Ok(()) => {}
            Err(e) => {
                let error = describe_error(&e, &rule.script, &session, &sandbox, &mut outcome);
                if outcome.status == RunStatus::Succeeded {
                    outcome.status = RunStatus::Failed;
                    outcome.error = Some(error);
                }
            }
        },
        Err(None) => {
            outcome.status = RunStatus::Skipped;
            outcome.reason = Some("the `when` condition is false".into());
        }
        Err(Some(error)) => {
            if outcome.status == RunStatus::Succeeded {
                outcome.status = RunStatus::Failed;
                outcome.error = Some(error);
            }
        }
    }

    outcome.logs = std::mem::take(&mut *logs.lock().unwrap_or_else(|p| p.into_inner()));
    outcome.duration = started.elapsed();
    outcome
}

/// Classifies a script error. `skip()` sets the outcome to skipped and returns an
/// unused error; every other error fails the run.
fn describe_error(
    e: &EvalAltResult,
    compiled: &Compiled,
    session: &Session,
    sandbox: &engine::Sandbox,
    outcome: &mut Outcome,
) -> RunError {
    // An error inside a script function is reported where it happened, naming the
    // function, rather than at the call.
    let mut e = e;
    let mut functions = Vec::new();
    while let EvalAltResult::ErrorInFunctionCall(name, _, inner, _) = e {
        functions.push(name.clone());
        e = inner.as_ref();
    }
    let origin = compiled.origin.as_ref();
    let mut pos = e.position();
    if pos.is_none() {
        // Errors of module functions come without a position: find the call by the
        // name the message starts with, when the script makes only one such call.
        pos = only_call_of(&compiled.ast, &error_text(e)).unwrap_or(pos);
    }
    let (line, column) = match origin.locate(pos) {
        Some((l, c)) => (Some(l), Some(c)),
        None => (None, None),
    };
    let mut error = RunError {
        message: String::new(),
        limit: None,
        file: Some(origin.file.clone()),
        line,
        column,
    };
    match e {
        EvalAltResult::ErrorTerminated(token, _) => match engine::stop_of(token) {
            Some(Stop::Skip(reason)) => {
                outcome.status = RunStatus::Skipped;
                outcome.reason = Some(reason);
            }
            Some(Stop::Fail(reason)) => error.message = format!("fail: {reason}"),
            Some(Stop::Limit { limit, message }) => {
                // Out of time before an API request could be sent.
                if limit == "timeout" {
                    outcome.retryable = mostly_waiting(session, sandbox.limits.timeout);
                }
                error.message = message;
                error.limit = Some(limit);
            }
            Some(Stop::Timeout(after)) => {
                error.message = format!(
                    "limit timeout reached: the script ran longer than {}",
                    humantime::format_duration(after)
                );
                error.limit = Some("timeout".into());
                outcome.retryable = mostly_waiting(session, after);
            }
            Some(Stop::Cancelled) => {
                error.message = "the run was stopped because the service is shutting down".into();
                outcome.retryable = true;
            }
            None => error.message = format!("the script was terminated: {token}"),
        },
        EvalAltResult::ErrorTooManyOperations(_) => {
            error.message = format!(
                "limit max_operations reached: the script used more than {} operations",
                sandbox.limits.max_operations
            );
            error.limit = Some("max_operations".into());
        }
        EvalAltResult::ErrorStackOverflow(_) => {
            error.message = "limit call depth reached: functions call each other too deeply".into();
            error.limit = Some("call_depth".into());
        }
        EvalAltResult::ErrorDataTooLarge(what, _) => {
            error.message = format!("limit size reached: {what} is too large");
            error.limit = Some("size".into());
        }
        EvalAltResult::ErrorRuntime(value, _) => {
            let text = value.to_string();
            // A client operation that failed and that the script did not catch: the
            // job is retried when the API failure was transient.
            if let Some(last) = session.last_error()
                && last.to_string() == text
            {
                outcome.retryable = last.is_transient();
            }
            error.message = text;
        }
        other => error.message = engine::plain_message(other),
    }
    if let Some(name) = functions.last() {
        error.message = format!("in function `{name}`: {}", error.message);
    }
    error
}

/// Whether a run that timed out spent most of its time waiting for the API (a slow or
/// rate-limited API, retries of its failures): then the timeout is the API's, and the
/// job is tried again later. A script that loops spends little of it so, and is not.
fn mostly_waiting(session: &Session, timeout: std::time::Duration) -> bool {
    let waited: u64 = session.calls().iter().map(|c| c.millis).sum();
    u128::from(waited) * 2 >= timeout.as_millis()
}

/// The text of an error as the run record shows it, before any prefix.
fn error_text(e: &EvalAltResult) -> String {
    match e {
        EvalAltResult::ErrorRuntime(value, _) => value.to_string(),
        EvalAltResult::ErrorTerminated(token, _) => match engine::stop_of(token) {
            Some(Stop::Fail(_)) => "fail:".into(),
            Some(Stop::Skip(_)) => "skip:".into(),
            Some(Stop::Limit { message, .. }) => message,
            _ => String::new(),
        },
        other => engine::plain_message(other),
    }
}

/// The position of the one call of the function an error message names
/// (`clients::update: ...`, `limit ...: clients::tag needs another`, `fail:`), or
/// `None` when the script calls it more than once or not at all.
fn only_call_of(ast: &AST, message: &str) -> Option<Position> {
    let named = |module: &str, name: &str| {
        let full = if module.is_empty() {
            format!("{name}:")
        } else {
            format!("{module}::{name}")
        };
        if module.is_empty() {
            message.starts_with(&full)
        } else {
            message.starts_with(&format!("{full}:")) || message.contains(&format!("{full} "))
        }
    };
    let mut found = Vec::new();
    ast.walk(&mut |path| {
        let call = match path.last() {
            Some(rhai::ASTNode::Expr(rhai::Expr::FnCall(call, pos)))
            | Some(rhai::ASTNode::Stmt(rhai::Stmt::FnCall(call, pos))) => Some((call, pos)),
            _ => None,
        };
        if let Some((call, pos)) = call {
            let module = if call.namespace.path.is_empty() {
                ""
            } else {
                call.namespace.root()
            };
            if named(module, call.name.as_str()) {
                found.push(*pos);
            }
        }
        true
    });
    match found.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::fmt::Write as _;

    use super::*;
    use crate::clients::Backend;
    use crate::clients::embedded::EmbeddedStore;
    use crate::clients::session::Mode;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// A rule whose script builds a string of 2 MiB, then `strings` variables of about
    /// 3.9 MB each, all alive until the end, under `limits.max_memory: {max_memory}`.
    fn hoarding_rule(strings: usize, max_memory: &str) -> Rule {
        let mut script = String::from(
            "  let base = \"x\";\n  for i in 0..21 { base += base; }\n  base += base.sub_string(0, 1800000);\n",
        );
        for i in 1..=strings {
            let _ = writeln!(script, "  let v{i} = base + \"{i}\";");
        }
        let _ = writeln!(script, "  log::info(`held ${{v{strings}.len()}}`);");
        load_rule(&format!(
            "name: hoard\non:\n  webhook: {{}}\nscript: |\n{script}limits:\n  max_memory: {max_memory}\n  timeout: 60s\n"
        ))
    }

    /// Loads a rule from the text of its file.
    fn load_rule(text: &str) -> Rule {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rule.yaml");
        std::fs::write(&path, text).unwrap();
        let (loaded, diagnostics) = crate::rules::load_file(&path, &no_env);
        loaded
            .unwrap_or_else(|| panic!("the rule loads: {diagnostics:#?}"))
            .rule
    }

    fn run_rule(rule: &Rule) -> Outcome {
        let store = EmbeddedStore::in_memory().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(store.company("default"));
        let session = Arc::new(Session::new(
            backend,
            Mode::Live,
            rule.limits.max_api_calls,
            rule.limits.max_changes,
        ));
        run(rule, &serde_json::json!({ "body": {} }), session, None)
    }

    /// A backend whose reads take 400 ms, as a slow or rate-limited API's would.
    struct SlowApi(crate::clients::embedded::EmbeddedBackend);

    impl Backend for SlowApi {
        fn list(
            &self,
            query: &crate::clients::ListQuery,
        ) -> Result<crate::clients::Page, crate::clients::ApiError> {
            std::thread::sleep(std::time::Duration::from_millis(400));
            self.0.list(query)
        }
        fn get(
            &self,
            id: &str,
        ) -> Result<Option<crate::clients::Client>, crate::clients::ApiError> {
            self.0.get(id)
        }
        fn create(
            &self,
            fields: &serde_json::Map<String, serde_json::Value>,
        ) -> Result<crate::clients::Client, crate::clients::ApiError> {
            self.0.create(fields)
        }
        fn update(
            &self,
            id: &str,
            fields: &serde_json::Map<String, serde_json::Value>,
        ) -> Result<crate::clients::Client, crate::clients::ApiError> {
            self.0.update(id, fields)
        }
        fn name(&self) -> &'static str {
            "slow"
        }
    }

    fn timed_rule(script: &str) -> Rule {
        load_rule(&format!(
            "name: timed\non:\n  webhook: {{}}\nscript: |\n  {script}\nlimits:\n  timeout: 1s\n  max_operations: 10000000000\n"
        ))
    }

    #[test]
    fn a_timeout_spent_waiting_for_the_api_is_retried_and_one_spent_looping_is_not() {
        let rule = timed_rule("for i in 0..10 { clients::search(#{ fulltext: \"x\" }); }");
        let backend = SlowApi(EmbeddedStore::in_memory().unwrap().company("default"));
        let session = Arc::new(Session::new(Arc::new(backend), Mode::Live, 100, None));
        let outcome = run(&rule, &serde_json::json!({ "body": {} }), session, None);
        let error = outcome.error.clone().unwrap();
        assert_eq!(error.limit.as_deref(), Some("timeout"), "{outcome:#?}");
        assert!(
            outcome.retryable,
            "the API's slowness is worth a retry: {outcome:#?}"
        );

        let outcome = run_rule(&timed_rule("loop { }"));
        let error = outcome.error.clone().unwrap();
        assert_eq!(error.limit.as_deref(), Some("timeout"), "{outcome:#?}");
        assert!(
            !outcome.retryable,
            "a script that loops fails the same way again"
        );
    }

    #[test]
    fn a_script_holding_more_than_max_memory_fails_naming_the_limit() {
        // 300 strings of 3.9 MB: about 1.2 GB if nothing stopped it.
        let rule = hoarding_rule(300, "64MiB");
        assert_eq!(rule.limits.max_memory, 64 << 20);
        let outcome = run_rule(&rule);
        assert_eq!(outcome.status, RunStatus::Failed, "{outcome:#?}");
        let error = outcome.error.unwrap();
        assert_eq!(error.limit.as_deref(), Some("max_memory"), "{error}");
        assert!(
            error
                .message
                .starts_with("limit max_memory reached: the script held more than 64MiB"),
            "{error}"
        );
        assert!(!outcome.retryable, "a limit is not worth a retry");
        // Stopped at the `let` that crossed 64 MiB: the 17th string or so, far from the
        // 300th. The script starts on line 5 of the file, its `let`s on line 8.
        let line = error.line.unwrap();
        assert!((8 + 10..8 + 20).contains(&line), "stopped at line {line}");
    }

    #[test]
    fn a_script_under_max_memory_succeeds() {
        // 10 strings of 3.9 MB: about 40 MB.
        let outcome = run_rule(&hoarding_rule(10, "64MiB"));
        assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:#?}");
        assert_eq!(
            outcome.logs[0].message,
            format!("held {}", 2_097_152 + 1_800_000 + 2)
        );
    }

    fn expression(text: &str) -> Compiled {
        let origin = Origin {
            file: PathBuf::from("rule.yaml"),
            line_offset: 0,
            column_offset: 0,
            source: Arc::from(text),
        };
        compile_expression(text, origin).unwrap()
    }

    #[test]
    fn a_dedupe_expression_holding_too_much_memory_fails_naming_the_limit() {
        // 300 copies of a 1 MiB field: about 300 MB if nothing stopped it.
        let event = serde_json::json!({
            "body": { "text": "x".repeat(1 << 20), "items": vec![0; 300] },
        });
        let hoard = expression("(event.body.items + []).map(|i| event.body.text + i).len()");
        let error = eval_key(&hoard, &event).unwrap_err();
        assert!(
            error.starts_with("limit max_memory reached: the script held more than 64MiB"),
            "{error}"
        );
        // The same on 3 items holds about 3 MB: allowed.
        let event = serde_json::json!({
            "body": { "text": "x".repeat(1 << 20), "items": vec![0; 3] },
        });
        assert_eq!(eval_key(&hoard, &event).unwrap().as_deref(), Some("3"));
    }

    #[test]
    fn the_default_limit_stops_a_script_on_a_worker_thread_too() {
        let mut rule = hoarding_rule(300, "64MiB");
        rule.limits = crate::rules::Limits::default();
        let outcome = with_script_stack(std::thread::Builder::new(), move || run_rule(&rule))
            .unwrap()
            .join()
            .unwrap();
        let error = outcome.error.unwrap();
        assert_eq!(error.limit.as_deref(), Some("max_memory"), "{error}");
        assert!(error.message.contains("256MiB"), "{error}");
    }
}
