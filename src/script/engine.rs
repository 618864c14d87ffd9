//! The sandbox: the one function that builds a Rhai engine with every limit, and the
//! compile-only engine used at load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rhai::module_resolvers::DummyModuleResolver;
use rhai::packages::{Package, StandardPackage};
use rhai::{Dynamic, Engine, EvalAltResult, Map, Shared};

use super::memory::Meter;
use super::{LogLine, Stop};
use crate::clients::session::Session;
use crate::rules::Limits;

/// Size limits shared by every script.
const MAX_CALL_LEVELS: usize = 48;
const MAX_EXPR_DEPTH: usize = 64;
const MAX_FN_EXPR_DEPTH: usize = 32;
const MAX_STRING_BYTES: usize = 4 * 1024 * 1024;
const MAX_ARRAY_ITEMS: usize = 100_000;
const MAX_MAP_ITEMS: usize = 100_000;
const MAX_VARIABLES: usize = 1_000;
const MAX_FUNCTIONS: usize = 200;

/// How often, in operations, the wall clock is read.
const CLOCK_EVERY: u64 = 512;

/// The most memory one evaluation of an ingest expression (`dedupe`) may hold.
pub const MAX_EXPRESSION_MEMORY: u64 = 64 << 20;

thread_local! {
    /// What the expression evaluated on this thread holds since it started; set by
    /// [`with_expression_meter`] for the length of one evaluation.
    static EXPRESSION_METER: std::cell::Cell<Option<Meter>> = const { std::cell::Cell::new(None) };
}

/// Runs `f`, an evaluation on the [`expressions`] engine, with its memory measured from
/// now against [`MAX_EXPRESSION_MEMORY`].
pub(crate) fn with_expression_meter<T>(f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            EXPRESSION_METER.with(|m| m.set(None));
        }
    }
    EXPRESSION_METER.with(|m| m.set(Meter::start()));
    let _reset = Reset;
    f()
}

/// The limits of one run.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub limits: Limits,
    pub deadline: Instant,
    /// Set when the service stops: the run ends at the next operation.
    pub cancel: Option<Arc<AtomicBool>>,
    /// What the run's thread holds since the run started, checked against
    /// `limits.max_memory` at every operation; `None` where memory cannot be measured.
    pub memory: Option<Meter>,
}

/// Settings every engine shares, for compiling and for running.
fn configure(engine: &mut Engine) {
    engine.set_max_call_levels(MAX_CALL_LEVELS);
    engine.set_max_expr_depths(MAX_EXPR_DEPTH, MAX_FN_EXPR_DEPTH);
    engine.set_max_string_size(MAX_STRING_BYTES);
    engine.set_max_array_size(MAX_ARRAY_ITEMS);
    engine.set_max_map_size(MAX_MAP_ITEMS);
    engine.set_max_variables(MAX_VARIABLES);
    engine.set_max_functions(MAX_FUNCTIONS);
    // No `import`: modules come only from the service.
    engine.set_max_modules(0);
    engine.set_module_resolver(DummyModuleResolver::new());
    engine.disable_symbol("eval");
    engine.set_strict_variables(true);
    engine.set_fail_on_invalid_map_property(false);
}

fn standard() -> &'static Shared<rhai::Module> {
    static PACKAGE: OnceLock<Shared<rhai::Module>> = OnceLock::new();
    PACKAGE.get_or_init(|| StandardPackage::new().as_shared_module())
}

/// The engine that compiles rule scripts at load. It runs nothing.
pub fn compiler() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut engine = Engine::new_raw();
        engine.register_global_module(standard().clone());
        configure(&mut engine);
        // Strict variables resolve module names at compile time; the functions
        // themselves are checked by `modules::unknown_calls`.
        for (name, _) in super::modules::MODULES {
            engine.register_static_module(*name, rhai::Module::new().into());
        }
        engine
    })
}

/// The engine that evaluates one-line expressions at ingest (`dedupe`): no client
/// functions, and a small operations budget so that a delivery is answered at once.
pub fn expressions() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut engine = Engine::new_raw();
        engine.register_global_module(standard().clone());
        configure(&mut engine);
        engine.set_max_operations(100_000);
        let max_memory = i64::try_from(MAX_EXPRESSION_MEMORY).unwrap_or(i64::MAX);
        engine.on_progress(move |_| {
            let meter = EXPRESSION_METER.with(std::cell::Cell::get)?;
            (meter.grown() > max_memory).then(|| token(&memory_stop(max_memory)))
        });
        super::modules::register_pure(&mut engine);
        engine
    })
}

/// Builds the engine for one run: every limit of the sandbox, the script modules bound
/// to this run's session, and log lines collected into `logs`.
pub fn build(sandbox: &Sandbox, session: Arc<Session>, logs: Arc<Mutex<Vec<LogLine>>>) -> Engine {
    let mut engine = Engine::new_raw();
    engine.register_global_module(standard().clone());
    configure(&mut engine);
    engine.set_max_operations(sandbox.limits.max_operations);

    let deadline = sandbox.deadline;
    let timeout = sandbox.limits.timeout;
    let cancel = sandbox.cancel.clone();
    let meter = sandbox.memory;
    let max_memory = i64::try_from(sandbox.limits.max_memory).unwrap_or(i64::MAX);
    engine.on_progress(move |ops| {
        // Every operation: one operation can allocate megabytes (a string of the
        // largest size), so checking every few would let a run overshoot by as many.
        if let Some(meter) = &meter
            && meter.grown() > max_memory
        {
            return Some(token(&memory_stop(max_memory)));
        }
        if ops % CLOCK_EVERY != 0 {
            return None;
        }
        if cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Some(token(&Stop::Cancelled));
        }
        if Instant::now() >= deadline {
            return Some(token(&Stop::Timeout(timeout)));
        }
        None
    });

    let print_logs = logs.clone();
    engine.on_print(move |text| push_log(&print_logs, "info", text));
    let debug_logs = logs.clone();
    engine.on_debug(move |text, _, _| push_log(&debug_logs, "debug", text));

    super::modules::register(&mut engine, session, logs);
    engine
}

fn memory_stop(max_memory: i64) -> Stop {
    Stop::Limit {
        limit: "max_memory".into(),
        message: format!(
            "limit max_memory reached: the script held more than {} of memory",
            crate::size::format(max_memory.unsigned_abs())
        ),
    }
}

pub(crate) fn push_log(logs: &Mutex<Vec<LogLine>>, level: &'static str, text: &str) {
    const MAX_LINES: usize = 1_000;
    const MAX_LINE: usize = 4_096;
    let mut logs = logs.lock().unwrap_or_else(|p| p.into_inner());
    if logs.len() >= MAX_LINES {
        return;
    }
    let mut message: String = text.chars().take(MAX_LINE).collect();
    if logs.len() + 1 == MAX_LINES {
        message = format!("log limit of {MAX_LINES} lines reached; later lines are dropped");
    }
    logs.push(LogLine { level, message });
}

/// The termination value that carries a [`Stop`] out of the script.
pub(crate) fn token(stop: &Stop) -> Dynamic {
    let mut map = Map::new();
    let (kind, a, b) = match stop {
        Stop::Skip(reason) => ("skip", reason.clone(), String::new()),
        Stop::Fail(reason) => ("fail", reason.clone(), String::new()),
        Stop::Limit { limit, message } => ("limit", limit.clone(), message.clone()),
        Stop::Timeout(after) => ("timeout", after.as_millis().to_string(), String::new()),
        Stop::Cancelled => ("cancelled", String::new(), String::new()),
    };
    map.insert("stop".into(), kind.into());
    map.insert("a".into(), a.into());
    map.insert("b".into(), b.into());
    map.into()
}

/// Reads back a termination value made by [`token`].
pub(crate) fn stop_of(token: &Dynamic) -> Option<Stop> {
    let map = token.read_lock::<Map>()?;
    let field = |name: &str| map.get(name).map(|v| v.to_string()).unwrap_or_default();
    Some(match field("stop").as_str() {
        "skip" => Stop::Skip(field("a")),
        "fail" => Stop::Fail(field("a")),
        "limit" => Stop::Limit {
            limit: field("a"),
            message: field("b"),
        },
        "timeout" => Stop::Timeout(Duration::from_millis(field("a").parse().unwrap_or(0))),
        "cancelled" => Stop::Cancelled,
        _ => return None,
    })
}

/// A Rhai error's message without the position Rhai appends; positions are reported in
/// the rule file's terms instead.
pub(crate) fn plain_message(e: &EvalAltResult) -> String {
    let text = e.to_string();
    match text.rfind(" (line ") {
        Some(cut) if text.ends_with(')') => text[..cut].to_owned(),
        _ => text,
    }
}

/// An error thrown by a native function: catchable by the script.
pub(crate) fn runtime_error(message: impl Into<String>) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(message.into()),
        rhai::Position::NONE,
    ))
}

/// A stop thrown by a native function: not catchable.
pub(crate) fn stop_error(stop: &Stop) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorTerminated(
        token(stop),
        rhai::Position::NONE,
    ))
}
