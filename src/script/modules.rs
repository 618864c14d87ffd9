//! The modules a script reaches: `clients::`, `log::`, `json::`, `text::`, and the
//! `skip` and `fail` functions. Nothing else: no files, no network, no environment.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use rhai::{AST, Dynamic, Engine, EvalAltResult, FuncRegistration, Module, Position};

use super::convert::{from_dynamic, to_dynamic, to_fields};
use super::engine::{push_log, runtime_error, stop_error};
use super::{LogLine, Stop};
use crate::clients::session::{ClientWalk, SearchQuery, Session, SessionError};
use crate::clients::{Client, Sort};
use crate::text;

type Result<T> = std::result::Result<T, Box<EvalAltResult>>;

/// The functions of each module, for checking calls at load.
pub const MODULES: &[(&str, &[&str])] = &[
    (
        "clients",
        &[
            "get",
            "search",
            "find_by_email",
            "create",
            "update",
            "upsert",
            "tag",
            "untag",
            "set_image",
            "each",
        ],
    ),
    ("log", &["info", "warn", "error"]),
    ("json", &["parse", "to_string"]),
    (
        "text",
        &[
            "normalize_email",
            "trim",
            "normalize_phone",
            "split_name",
            "title_case",
        ],
    ),
    ("time", &["now", "parse", "format", "days_between"]),
];

/// Calls to module functions that do not exist, with their positions: caught at load
/// instead of at the first event.
pub fn unknown_calls(ast: &AST) -> Vec<(Position, String, Option<String>)> {
    let mut problems = Vec::new();
    ast.walk(&mut |path| {
        if let Some(rhai::ASTNode::Stmt(rhai::Stmt::Import(_, pos))) = path.last() {
            problems.push((
                *pos,
                "`import` is not available in rule scripts".to_owned(),
                Some(
                    "scripts use the built-in modules clients, log, json, text and time".to_owned(),
                ),
            ));
        }
        // A call is an expression (`let c = clients::get(1)`) or, on its own, a
        // statement (`clients::tag(c, "x");`).
        let call = match path.last() {
            Some(rhai::ASTNode::Expr(rhai::Expr::FnCall(call, pos)))
            | Some(rhai::ASTNode::Stmt(rhai::Stmt::FnCall(call, pos))) => Some((call, pos)),
            _ => None,
        };
        if let Some((call, pos)) = call {
            if call.namespace.path.is_empty() {
                if call.name == "eval" {
                    problems.push((
                        *pos,
                        "`eval` is not available in rule scripts".to_owned(),
                        None,
                    ));
                }
                return true;
            }
            let module = call.namespace.root();
            let name = call.name.as_str();
            match MODULES.iter().find(|(m, _)| *m == module) {
                None => {
                    let known: Vec<&str> = MODULES.iter().map(|(m, _)| *m).collect();
                    problems.push((
                        *pos,
                        format!("unknown module `{module}`"),
                        Some(format!("scripts can use {}", known.join(", "))),
                    ));
                }
                Some((_, functions)) if !functions.contains(&name) => {
                    let close = functions
                        .iter()
                        .min_by_key(|f| strsim::damerau_levenshtein(f, name))
                        .filter(|f| strsim::damerau_levenshtein(f, name) <= 3);
                    let help = match close {
                        Some(f) => format!("did you mean `{module}::{f}`?"),
                        None => format!("`{module}::` has {}", functions.join(", ")),
                    };
                    problems.push((
                        *pos,
                        format!("unknown function `{module}::{name}`"),
                        Some(help),
                    ));
                }
                Some(_) => {}
            }
        }
        true
    });
    problems
}

/// Registers the modules that need no run: `json::` and `text::`.
pub fn register_pure(engine: &mut Engine) {
    engine.register_static_module("json", json_module().into());
    engine.register_static_module("text", text_module().into());
    engine.register_static_module("time", super::helpers::time_module().into());
}

/// Registers every module on a run's engine.
pub fn register(engine: &mut Engine, session: Arc<Session>, logs: Arc<Mutex<Vec<LogLine>>>) {
    engine.register_type_with_name::<ClientPages>("clients::each");
    engine.register_iterator_result::<ClientPages, Dynamic>();
    engine.register_static_module("clients", clients_module(session).into());
    engine.register_static_module("log", log_module(logs).into());
    engine.register_static_module("json", json_module().into());
    engine.register_static_module("text", text_module().into());
    engine.register_static_module("time", super::helpers::time_module().into());

    engine.register_fn("skip", |reason: &str| -> Result<()> {
        Err(stop_error(&Stop::Skip(reason.to_owned())))
    });
    engine.register_fn("skip", || -> Result<()> {
        Err(stop_error(&Stop::Skip("skipped by the script".into())))
    });
    engine.register_fn("fail", |reason: &str| -> Result<()> {
        Err(stop_error(&Stop::Fail(reason.to_owned())))
    });
}

pub(crate) fn set<A: 'static, const N: usize, const X: bool, R, F>(
    module: &mut Module,
    name: &str,
    f: F,
) where
    R: rhai::Variant + Clone,
    F: rhai::RhaiNativeFunc<A, N, X, R, true> + Send + Sync + 'static,
{
    // Volatile: never evaluated ahead of time by the optimizer.
    FuncRegistration::new(name)
        .with_volatility(true)
        .set_into_module(module, f);
}

/// Turns a session error into a script error: limits end the run, other errors can be
/// caught with `try`/`catch`.
fn script_error(e: SessionError) -> Box<EvalAltResult> {
    match e {
        SessionError::Limit { limit, message } => stop_error(&Stop::Limit {
            limit: limit.into(),
            message: format!("limit {limit} reached: {message}"),
        }),
        other => runtime_error(other.to_string()),
    }
}

fn client_value(client: &Client) -> Dynamic {
    to_dynamic(&serde_json::Value::Object(client.to_flat()))
}

/// The id of a client given as a client map, a string or an integer.
fn client_id(call: &str, target: &Dynamic) -> Result<String> {
    if let Some(map) = target.read_lock::<rhai::Map>() {
        return match map.get("id") {
            Some(id) if id.is_string() || id.is_int() => Ok(id.to_string()),
            _ => Err(runtime_error(format!(
                "clients::{call}: the client map has no `id`; pass a client returned by \
                 another clients:: function"
            ))),
        };
    }
    if target.is_string() || target.is_int() {
        let id = target.to_string();
        if id.trim().is_empty() {
            return Err(runtime_error(format!(
                "clients::{call}: the client id is empty"
            )));
        }
        return Ok(id);
    }
    Err(runtime_error(format!(
        "clients::{call}: expected a client or a client id, found {}",
        target.type_name()
    )))
}

fn tag_list(call: &str, tags: &Dynamic) -> Result<Vec<String>> {
    if tags.is_string() {
        return Ok(vec![tags.to_string()]);
    }
    if let Some(items) = tags.read_lock::<rhai::Array>() {
        return items
            .iter()
            .map(|t| {
                if t.is_string() {
                    Ok(t.to_string())
                } else {
                    Err(runtime_error(format!(
                        "clients::{call}: tags must be strings, found {}",
                        t.type_name()
                    )))
                }
            })
            .collect();
    }
    Err(runtime_error(format!(
        "clients::{call}: expected a tag or an array of tags, found {}",
        tags.type_name()
    )))
}

fn search_query(value: &Dynamic) -> Result<SearchQuery> {
    let fields = to_fields("clients::search", value).map_err(runtime_error)?;
    let mut query = SearchQuery {
        limit: SearchQuery::DEFAULT_LIMIT,
        ..SearchQuery::default()
    };
    let text = |key: &str, v: &serde_json::Value| -> Result<String> {
        match v {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            _ => Err(runtime_error(format!(
                "clients::search: `{key}` must be a string"
            ))),
        }
    };
    let tags = |key: &str, v: &serde_json::Value| -> Result<Vec<String>> {
        match v {
            serde_json::Value::String(s) => Ok(vec![text::normalize_label(s)]),
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| {
                    i.as_str().map(text::normalize_label).ok_or_else(|| {
                        runtime_error(format!("clients::search: `{key}` must hold strings"))
                    })
                })
                .collect(),
            _ => Err(runtime_error(format!(
                "clients::search: `{key}` must be a string or an array of strings"
            ))),
        }
    };
    for (key, v) in &fields {
        if v.is_null() {
            continue;
        }
        match key.as_str() {
            "fulltext" => query.fulltext = Some(text(key, v)?),
            "tag" => query.tags = tags(key, v)?,
            "any_tag" => query.any_tags = tags(key, v)?,
            "id" => query.id = Some(text(key, v)?),
            "buyer_id" => query.buyer_id = Some(text(key, v)?),
            "email" => query.email = Some(text::normalize_email(&text(key, v)?)),
            "phone" => query.phone = Some(text(key, v)?),
            "sort" => {
                let s = text(key, v)?;
                query.sort = Some(Sort::parse(&s).ok_or_else(|| {
                    runtime_error(format!(
                        "clients::search: expected `sort` of first_name, last_name or \
                         last_first_name (with an optional leading -), found {s:?}"
                    ))
                })?);
            }
            "limit" => {
                query.limit = v
                    .as_u64()
                    .filter(|n| *n > 0)
                    .map(|n| n.min(1_000_000) as usize)
                    .ok_or_else(|| {
                        runtime_error("clients::search: `limit` must be a positive integer")
                    })?;
            }
            other => {
                return Err(runtime_error(format!(
                    "clients::search: unknown query key `{other}`; expected fulltext, tag, \
                     any_tag, id, buyer_id, email, phone, sort or limit"
                )));
            }
        }
    }
    Ok(query)
}

fn clients_module(session: Arc<Session>) -> Module {
    let mut m = Module::new();

    let s = session.clone();
    set(&mut m, "get", move |id: Dynamic| -> Result<Dynamic> {
        let id = client_id("get", &id)?;
        match s.get(&id).map_err(script_error)? {
            Some(client) => Ok(client_value(&client)),
            None => Ok(Dynamic::UNIT),
        }
    });

    let s = session.clone();
    set(
        &mut m,
        "search",
        move |query: Dynamic| -> Result<rhai::Array> {
            let query = search_query(&query)?;
            let found = s.search(&query).map_err(script_error)?;
            Ok(found.iter().map(client_value).collect())
        },
    );

    let s = session.clone();
    set(
        &mut m,
        "each",
        move |query: Dynamic| -> Result<ClientPages> {
            let mut parsed = search_query(&query)?;
            // A walk has no default limit: it is for every matching client.
            let has_limit = query
                .read_lock::<rhai::Map>()
                .is_some_and(|m| m.contains_key("limit"));
            if !has_limit {
                parsed.limit = usize::MAX;
            }
            Ok(ClientPages {
                session: s.clone(),
                query: parsed,
            })
        },
    );

    let s = session.clone();
    set(
        &mut m,
        "find_by_email",
        move |email: Dynamic| -> Result<Dynamic> {
            if email.is_unit() {
                return Ok(Dynamic::UNIT);
            }
            if !email.is_string() {
                return Err(runtime_error(format!(
                    "clients::find_by_email: expected an email string, found {}",
                    email.type_name()
                )));
            }
            match s.find_by_email(&email.to_string()).map_err(script_error)? {
                Some(client) => Ok(client_value(&client)),
                None => Ok(Dynamic::UNIT),
            }
        },
    );

    let s = session.clone();
    set(
        &mut m,
        "create",
        move |fields: Dynamic| -> Result<Dynamic> {
            let fields = to_fields("clients::create", &fields).map_err(runtime_error)?;
            let client = s.create(fields).map_err(script_error)?;
            Ok(client_value(&client))
        },
    );

    let s = session.clone();
    set(
        &mut m,
        "update",
        move |target: Dynamic, fields: Dynamic| -> Result<Dynamic> {
            let id = client_id("update", &target)?;
            let fields = to_fields("clients::update", &fields).map_err(runtime_error)?;
            let client = s.update(&id, fields).map_err(script_error)?;
            Ok(client_value(&client))
        },
    );

    let s = session.clone();
    set(
        &mut m,
        "upsert",
        move |fields: Dynamic| -> Result<Dynamic> {
            let fields = to_fields("clients::upsert", &fields).map_err(runtime_error)?;
            let client = s.upsert(fields).map_err(script_error)?;
            Ok(client_value(&client))
        },
    );

    let s = session.clone();
    set(
        &mut m,
        "tag",
        move |target: Dynamic, tags: Dynamic| -> Result<Dynamic> {
            let id = client_id("tag", &target)?;
            let tags = tag_list("tag", &tags)?;
            let client = s.tag(&id, &tags).map_err(script_error)?;
            Ok(client_value(&client))
        },
    );

    let s = session.clone();
    set(
        &mut m,
        "set_image",
        move |target: Dynamic, file: Dynamic| -> Result<Dynamic> {
            let id = client_id("set_image", &target)?;
            let (file_id, filename) = file_ref(&file)?;
            let client = s
                .set_image(&id, &file_id, &filename)
                .map_err(script_error)?;
            Ok(client_value(&client))
        },
    );

    let s = session;
    set(
        &mut m,
        "untag",
        move |target: Dynamic, tags: Dynamic| -> Result<Dynamic> {
            let id = client_id("untag", &target)?;
            let tags = tag_list("untag", &tags)?;
            let client = s.untag(&id, &tags).map_err(script_error)?;
            Ok(client_value(&client))
        },
    );

    m
}

/// What `clients::each` returns: the clients matching a query, fetched one page at a
/// time as a `for` loop asks for them. Looping over it again starts a new walk.
#[derive(Clone)]
pub struct ClientPages {
    session: Arc<Session>,
    query: SearchQuery,
}

impl std::fmt::Debug for ClientPages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPages")
            .field("query", &self.query)
            .finish_non_exhaustive()
    }
}

impl IntoIterator for ClientPages {
    type Item = Result<Dynamic>;
    type IntoIter = ClientIter;

    fn into_iter(self) -> ClientIter {
        ClientIter {
            walk: self.session.walk(self.query),
            session: self.session,
            page: VecDeque::new(),
            done: false,
        }
    }
}

/// One walk of [`ClientPages`]: the page in hand, and where the next one comes from.
pub struct ClientIter {
    session: Arc<Session>,
    walk: ClientWalk,
    page: VecDeque<Client>,
    done: bool,
}

impl std::fmt::Debug for ClientIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIter")
            .field("buffered", &self.page.len())
            .finish_non_exhaustive()
    }
}

impl Iterator for ClientIter {
    type Item = Result<Dynamic>;

    fn next(&mut self) -> Option<Result<Dynamic>> {
        loop {
            if let Some(client) = self.page.pop_front() {
                return Some(Ok(client_value(&client)));
            }
            if self.done {
                return None;
            }
            // A failed request ends the walk; the loop raises the error.
            match self.session.next_page(&mut self.walk) {
                Ok(Some(clients)) => self.page.extend(clients),
                Ok(None) => self.done = true,
                Err(e) => {
                    self.done = true;
                    return Some(Err(script_error(e)));
                }
            }
        }
    }
}

/// The id and file name of an entry of `event.files`.
fn file_ref(file: &Dynamic) -> Result<(String, String)> {
    let expected = "clients::set_image: expected a file of event.files \
                    (a map with id and filename)";
    let Some(map) = file.read_lock::<rhai::Map>() else {
        return Err(runtime_error(format!(
            "{expected}, found {}",
            file.type_name()
        )));
    };
    let text = |key: &str| {
        map.get(key)
            .filter(|v| v.is_string())
            .map(|v| v.to_string())
            .filter(|v| !v.is_empty())
    };
    match (text("id"), text("filename")) {
        (Some(id), Some(filename)) => Ok((id, filename)),
        (None, _) => Err(runtime_error(format!("{expected}; this map has no id"))),
        (_, None) => Err(runtime_error(format!(
            "{expected}; this file has no file name, and an image needs one ending in .jpg, \
             .jpeg, .png or .gif"
        ))),
    }
}

fn log_module(logs: Arc<Mutex<Vec<LogLine>>>) -> Module {
    let mut m = Module::new();
    for level in ["info", "warn", "error"] {
        let logs = logs.clone();
        set(&mut m, level, move |message: Dynamic| -> Result<()> {
            push_log(&logs, level, &message.to_string());
            Ok(())
        });
    }
    m
}

fn json_module() -> Module {
    let mut m = Module::new();
    set(&mut m, "parse", |text: Dynamic| -> Result<Dynamic> {
        if !text.is_string() {
            return Err(runtime_error(format!(
                "json::parse: expected a string, found {}",
                text.type_name()
            )));
        }
        let text = text.to_string();
        serde_json::from_str::<serde_json::Value>(&text)
            .map(|v| to_dynamic(&v))
            .map_err(|e| runtime_error(format!("json::parse: the text is not valid JSON: {e}")))
    });
    set(&mut m, "to_string", |value: Dynamic| -> Result<String> {
        let json =
            from_dynamic(&value).map_err(|e| runtime_error(format!("json::to_string: {e}")))?;
        Ok(json.to_string())
    });
    m
}

fn text_module() -> Module {
    let mut m = Module::new();
    set(
        &mut m,
        "normalize_email",
        |value: Dynamic| -> Result<Dynamic> {
            if value.is_unit() {
                return Ok(Dynamic::UNIT);
            }
            Ok(text::normalize_email(&value.to_string()).into())
        },
    );
    set(&mut m, "trim", |value: Dynamic| -> Result<Dynamic> {
        if value.is_unit() {
            return Ok(Dynamic::UNIT);
        }
        Ok(text::trim(&value.to_string()).into())
    });
    super::helpers::add_text_functions(&mut m);
    m
}
