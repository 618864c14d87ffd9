//! One run's view of the API layer: the script-level client operations (search,
//! upsert, tag…) written once over any [`Backend`], with the run's accounting (API
//! calls, changes, limits) and, in plan mode, writes recorded instead of sent.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;
use serde_json::{Map, Value};

use super::image::Image;
use super::{ApiError, Backend, Client, ListQuery, MAX_PAGE_SIZE, READ_ONLY, Sort};
use crate::text;

#[cfg(test)]
mod journal_tests;
mod walk;
pub use walk::{ClientWalk, Progress};

/// Live runs send writes; plan runs (dry runs, rule tests) record them as a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Live,
    Plan,
}

/// Attributes that hold text, so that a number sent by a form becomes a string.
const TEXT_ATTRIBUTES: &[&str] = &[
    "first_name",
    "last_name",
    "email",
    "phone",
    "mobile_phone",
    "home_phone",
    "notes",
    "private_notes",
];

/// Page requests one search may make before it stops, whatever the server says.
const MAX_PAGES: u32 = 10_000;

/// A failed client operation, as a script sees it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    /// The API refused or failed; `transient` failures are worth a retry.
    #[error("clients::{call}: {error}")]
    Api { call: &'static str, error: ApiError },
    /// The script called a function wrongly.
    #[error("clients::{call}: {message}")]
    Invalid { call: &'static str, message: String },
    /// A limit of the rule was reached; the run ends.
    #[error("limit {limit} reached: {message}")]
    Limit {
        limit: &'static str,
        message: String,
    },
}

impl SessionError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SessionError::Api { error, .. } if error.transient)
    }

    fn invalid(call: &'static str, message: impl Into<String>) -> SessionError {
        SessionError::Invalid {
            call,
            message: message.into(),
        }
    }
}

/// One request to the backend, for the run record.
#[derive(Debug, Clone, Serialize)]
pub struct ApiCall {
    pub operation: &'static str,
    pub target: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub millis: u64,
}

/// A field's value before and after a write; `null` for an absent value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    pub field: String,
    pub before: Value,
    pub after: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Created,
    Updated,
}

/// A client changed by the run (or, in plan mode, that would be).
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub client_id: String,
    pub kind: ChangeKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub fields: Vec<FieldChange>,
}

impl Change {
    /// One line a person can read: `+ create client jane@example.com {first_name: Jane}`
    /// or `~ client 512: tags +lead`.
    pub fn describe(&self) -> String {
        match self.kind {
            ChangeKind::Created => {
                let who = self.email.clone().unwrap_or_else(|| self.client_id.clone());
                let fields: Vec<String> = self
                    .fields
                    .iter()
                    .filter(|f| f.field != "email")
                    .map(|f| format!("{}: {}", f.field, plain(&f.after)))
                    .collect();
                format!("+ create client {who} {{{}}}", fields.join(", "))
            }
            ChangeKind::Updated => {
                let parts: Vec<String> = self.fields.iter().map(describe_field).collect();
                format!("~ client {}: {}", self.client_id, parts.join("; "))
            }
        }
    }
}

fn describe_field(change: &FieldChange) -> String {
    if change.field == "tags" {
        let before = tag_list(&change.before);
        let after = tag_list(&change.after);
        let mut parts = Vec::new();
        for t in after.iter().filter(|t| !before.contains(t)) {
            parts.push(format!("+{t}"));
        }
        for t in before.iter().filter(|t| !after.contains(t)) {
            parts.push(format!("-{t}"));
        }
        return format!("tags {}", parts.join(" "));
    }
    format!(
        "{} {} → {}",
        change.field,
        short(&change.before),
        short(&change.after)
    )
}

fn short(value: &Value) -> String {
    match value {
        Value::Null => "\"\"".into(),
        Value::String(s) if s.chars().count() > 60 => {
            format!(
                "{:?}",
                format!("{}…", s.chars().take(60).collect::<String>())
            )
        }
        other => other.to_string(),
    }
}

/// A value as YAML's flow style writes it: strings bare unless quotes are needed.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s)
            if !s.is_empty()
                && s.chars().count() <= 60
                && s.trim() == s
                && !s.contains([',', ':', '{', '}', '[', ']', '"', '#', '\n'])
                && !matches!(s.as_str(), "true" | "false" | "null" | "~")
                && s.parse::<f64>().is_err() =>
        {
            s.clone()
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(plain).collect::<Vec<_>>().join(", ")
        ),
        other => short(other),
    }
}

fn tag_list(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// What a client search asks for, with the script API's semantics.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    pub fulltext: Option<String>,
    /// Every one of these tags must be present.
    pub tags: Vec<String>,
    /// At least one of these tags must be present.
    pub any_tags: Vec<String>,
    pub id: Option<String>,
    pub buyer_id: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub sort: Option<Sort>,
    pub limit: usize,
}

impl SearchQuery {
    pub const DEFAULT_LIMIT: usize = 1000;

    /// The list requests that find the matching clients: one, or one per tag of
    /// `any_tag`, each from its first page.
    fn list_requests(&self) -> Vec<ListQuery> {
        let mut base = ListQuery::first_page();
        base.id = self.id.clone();
        base.buyer_id = self.buyer_id.clone();
        base.sort = self.sort;
        // The API has no email or phone filter: full-text search narrows, the
        // post-filter decides.
        base.fulltext = self
            .fulltext
            .clone()
            .or_else(|| self.email.clone())
            .or_else(|| self.phone.as_deref().and_then(phone_needle));

        if !self.tags.is_empty() {
            let mut q = base;
            q.tags = self.tags.clone();
            vec![q]
        } else if !self.any_tags.is_empty() {
            // Whether several tags match any or all is unknown: one request per tag.
            self.any_tags
                .iter()
                .map(|tag| {
                    let mut q = base.clone();
                    q.tags = vec![tag.clone()];
                    q
                })
                .collect()
        } else {
            vec![base]
        }
    }

    fn matches(&self, client: &Client) -> bool {
        if let Some(id) = &self.id
            && &client.id != id
        {
            return false;
        }
        if let Some(buyer) = &self.buyer_id
            && client.attributes.get("buyer_id").map(value_text).as_deref() != Some(buyer)
        {
            return false;
        }
        if let Some(email) = &self.email {
            let have = client.str_attr("email").map(text::normalize_email);
            if have.as_deref() != Some(email.as_str()) {
                return false;
            }
        }
        if let Some(phone) = &self.phone {
            let wanted = text::phone_digits(phone);
            let found = ["phone", "mobile_phone", "home_phone"].iter().any(|field| {
                client
                    .attributes
                    .get(*field)
                    .map(value_text)
                    .is_some_and(|p| same_phone(&text::phone_digits(&p), &wanted))
            });
            if !found {
                return false;
            }
        }
        let tags: HashSet<String> = client
            .tags()
            .iter()
            .map(|t| text::normalize_label(t))
            .collect();
        if !self.tags.iter().all(|t| tags.contains(t)) {
            return false;
        }
        if !self.any_tags.is_empty() && !self.any_tags.iter().any(|t| tags.contains(t)) {
            return false;
        }
        true
    }
}

/// Two phones are the same when their E.164 forms are (in the default region), or,
/// for text the phone library cannot read, when their digits are, ignoring a country
/// code on one side.
fn same_phone(a: &str, b: &str) -> bool {
    let region = text::default_region();
    if let (Some(a), Some(b)) = (
        text::normalize_phone(a, region),
        text::normalize_phone(b, region),
    ) {
        return a == b;
    }
    let a = a.trim_start_matches('+');
    let b = b.trim_start_matches('+');
    if a.is_empty() || b.is_empty() {
        return false;
    }
    a == b
        || (a.len() > b.len() && a.ends_with(b) && b.len() >= 7)
        || (b.len() > a.len() && b.ends_with(a) && a.len() >= 7)
}

/// Whether a client holds every text field given (phones compared as phones).
fn same_fields(client: &Client, fields: &Map<String, Value>) -> bool {
    fields.iter().all(|(key, value)| {
        let Some(given) = value.as_str() else {
            return true;
        };
        let held = client.str_attr(key).unwrap_or("");
        if key.ends_with("phone") {
            same_phone(held, given)
        } else {
            text::normalize_label(held) == text::normalize_label(given)
        }
    })
}

/// The last four digits of a phone: found in a stored phone however it was written,
/// `(303) 555-0122` or `+13035550122`, so a full-text search narrows without missing.
fn phone_needle(phone: &str) -> Option<String> {
    let digits: Vec<char> = phone.chars().filter(char::is_ascii_digit).collect();
    (digits.len() >= 4).then(|| digits[digits.len() - 4..].iter().collect())
}

fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Where a job's writes are recorded, so that a retry of the job gets the recorded
/// results back instead of sending the writes again. Each write is recorded as intended
/// before it is sent and with its result once it succeeded: a write intended and never
/// recorded was cut off (the service stopped) with its outcome unknown.
pub trait WriteJournal: Send + Sync {
    /// What earlier attempts recorded, by sequence number, in order.
    fn earlier(&self) -> Vec<(u32, Recorded)>;
    /// Records that a write is about to be sent; an error stops it from being sent.
    fn intend(&self, sequence: u32, fingerprint: &str) -> Result<(), String>;
    /// Records a write that succeeded.
    fn record(&self, sequence: u32, fingerprint: &str, result: &Value);
    /// Forgets a write that was refused or failed: it made no change.
    fn forget(&self, sequence: u32);
}

/// A write as an earlier attempt of the job left it in the journal.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// Sent and answered with this result.
    Done { fingerprint: String, result: Value },
    /// About to be sent when the attempt was cut off: it may or may not have been made.
    Intended { fingerprint: String },
}

impl Recorded {
    /// What was written: the operation, the client and the fields.
    pub fn fingerprint(&self) -> &str {
        match self {
            Recorded::Done { fingerprint, .. } | Recorded::Intended { fingerprint } => fingerprint,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// When the run's time is up: no request starts after it.
    deadline: Option<Instant>,
    /// Raised when the service stops: no request starts after it.
    cancel: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// The last sequence number given to a journal entry, by this run or an earlier one.
    sequence: u32,
    /// The writes earlier attempts recorded, each with whether this run has matched it
    /// with a write of its own yet.
    earlier: Vec<(u32, Recorded, bool)>,
    calls: Vec<ApiCall>,
    changes: Vec<Change>,
    /// Clients read or written in this run, by id: the current state that updates diff
    /// against, so that an update right after a read sends no second read. At most
    /// [`KNOWN_MAX`] are kept, the oldest forgotten first (a forgotten client is read
    /// again if the script comes back to it), so a walk over every client keeps
    /// memory flat.
    known: HashMap<String, Client>,
    /// The ids of `known`, oldest first.
    known_order: VecDeque<String>,
    /// List requests of `clients::each` walks, and the clients they yielded.
    pages: u64,
    seen: u64,
    /// Ids of clients created by a plan run, which exist only in this run.
    planned: HashSet<String>,
    changed: HashSet<String>,
    last_error: Option<SessionError>,
}

/// The most clients a run keeps in memory as their current state.
const KNOWN_MAX: usize = 10_000;

impl State {
    /// Keeps a client's current state, forgetting the oldest past [`KNOWN_MAX`]; clients
    /// created by a plan run exist only here and are never forgotten.
    fn keep(&mut self, client: &Client) {
        if self
            .known
            .insert(client.id.clone(), client.clone())
            .is_none()
        {
            self.known_order.push_back(client.id.clone());
        }
        while self.known.len() > KNOWN_MAX {
            let Some(oldest) = self.known_order.pop_front() else {
                break;
            };
            if self.planned.contains(&oldest) {
                self.known_order.push_back(oldest);
                if self.planned.len() >= self.known.len() {
                    break;
                }
                continue;
            }
            self.known.remove(&oldest);
        }
    }
}

/// Where the bytes of an event's uploaded files are read from: the store for a
/// delivered event, memory for one run from the command line.
pub trait FileSource: Send + Sync {
    /// The bytes of the file with this id (`event.files[i].id`), or `None`.
    fn file_bytes(&self, id: &str) -> Result<Option<bytes::Bytes>, String>;
}

impl FileSource for std::collections::HashMap<String, bytes::Bytes> {
    fn file_bytes(&self, id: &str) -> Result<Option<bytes::Bytes>, String> {
        Ok(self.get(id).cloned())
    }
}

/// The API layer for one run.
pub struct Session {
    backend: Arc<dyn Backend>,
    mode: Mode,
    max_api_calls: u32,
    max_changes: Option<u32>,
    journal: Option<Box<dyn WriteJournal>>,
    files: Option<Arc<dyn FileSource>>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("backend", &self.backend.name())
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn new(
        backend: Arc<dyn Backend>,
        mode: Mode,
        max_api_calls: u32,
        max_changes: Option<u32>,
    ) -> Session {
        Session {
            backend,
            mode,
            max_api_calls,
            max_changes,
            journal: None,
            files: None,
            state: Mutex::new(State::default()),
        }
    }

    /// Records writes in a journal and takes back what an earlier attempt recorded.
    pub fn with_journal(mut self, journal: Box<dyn WriteJournal>) -> Session {
        {
            let mut state = self.state();
            state.earlier = journal
                .earlier()
                .into_iter()
                .map(|(sequence, recorded)| (sequence, recorded, false))
                .collect();
            state.sequence = state.earlier.iter().map(|(s, ..)| *s).max().unwrap_or(0);
        }
        self.journal = Some(journal);
        self
    }

    /// Reads uploaded files from `files`, for `set_image`.
    pub fn with_files(mut self, files: Arc<dyn FileSource>) -> Session {
        self.files = Some(files);
        self
    }

    /// Sends a write, unless an earlier attempt of the job made the same write: then
    /// its recorded result is returned and nothing is sent. When an earlier attempt was
    /// cut off while sending the same write, `settle` decides instead of `send`; with
    /// `settle_unanswered`, so does the next attempt after a send that got no answer.
    fn journaled(
        &self,
        operation: &'static str,
        fingerprint: String,
        settle_unanswered: bool,
        send: impl FnOnce() -> Result<Client, SessionError>,
        settle: impl FnOnce() -> Result<Client, SessionError>,
    ) -> Result<Client, SessionError> {
        let Some(journal) = &self.journal else {
            return send();
        };
        // The same write (operation, client, fields) recorded by an earlier attempt and
        // not matched yet in this run, whatever writes came before it: a retry may skip
        // some (an upsert that finds what the first attempt created sends nothing).
        let (sequence, earlier) = {
            let mut state = self.state();
            let found = state.earlier.iter().position(|(_, recorded, matched)| {
                !matched && recorded.fingerprint() == fingerprint
            });
            match found {
                Some(i) => {
                    state.earlier[i].2 = true;
                    (state.earlier[i].0, Some(state.earlier[i].1.clone()))
                }
                None => {
                    state.sequence += 1;
                    (state.sequence, None)
                }
            }
        };
        let cut_off = match earlier {
            Some(Recorded::Done { result, .. }) => match serde_json::from_value::<Client>(result) {
                Ok(client) => return Ok(client),
                // A result that no longer reads: settled as if it were cut off.
                Err(_) => true,
            },
            Some(Recorded::Intended { .. }) => true,
            None => false,
        };
        // Never a write that the journal does not know of: a retry could repeat it.
        if !cut_off && let Err(e) = journal.intend(sequence, &fingerprint) {
            return Err(SessionError::Api {
                call: operation,
                error: ApiError {
                    operation,
                    status: None,
                    detail: format!("the write was not sent: it cannot be journaled ({e})"),
                    pointer: None,
                    transient: true,
                },
            });
        }
        let outcome = if cut_off { settle() } else { send() };
        match &outcome {
            Ok(client) => {
                let value = serde_json::to_value(client).unwrap_or(Value::Null);
                journal.record(sequence, &fingerprint, &value);
            }
            // A write an earlier attempt was cut off in stays to be settled until it is.
            Err(_) if cut_off => {}
            // Perhaps sent, with no answer: the next attempt settles it.
            Err(SessionError::Api { error, .. }) if settle_unanswered && error.status.is_none() => {
            }
            // Refused by the API, or never sent (a limit, a bad call, no connection):
            // nothing was written, and the next attempt sends it again.
            Err(_) => journal.forget(sequence),
        }
        outcome
    }

    /// Sets the instant after which no request is sent: the run's timeout counts the
    /// time spent waiting for the API, not only the script's own operations.
    pub fn set_deadline(&self, deadline: Instant) {
        self.state().deadline = Some(deadline);
    }

    /// Sets the flag that, once raised (the service stops), lets no request start.
    pub fn set_cancel(&self, cancel: Arc<std::sync::atomic::AtomicBool>) {
        self.state().cancel = Some(cancel);
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic cannot happen while the lock is held; recover the data if it did.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The backend requests made so far.
    pub fn calls(&self) -> Vec<ApiCall> {
        self.state().calls.clone()
    }

    /// The clients changed so far (in plan mode: the plan).
    pub fn changes(&self) -> Vec<Change> {
        self.state().changes.clone()
    }

    /// The last error a client operation returned, so that the runner can tell a
    /// transient API failure from a script error once the script has given up.
    pub fn last_error(&self) -> Option<SessionError> {
        self.state().last_error.clone()
    }

    fn remember_error<T>(&self, result: Result<T, SessionError>) -> Result<T, SessionError> {
        if let Err(e) = &result {
            self.state().last_error = Some(e.clone());
        }
        result
    }

    /// Sends one request, counting it against `max_api_calls`.
    fn call<T>(
        &self,
        call: &'static str,
        operation: &'static str,
        target: &str,
        request: impl FnOnce(&dyn Backend) -> Result<T, ApiError>,
    ) -> Result<T, SessionError> {
        {
            let state = self.state();
            if state
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
            {
                return Err(SessionError::Limit {
                    limit: "shutdown",
                    message: format!(
                        "the service is stopping: clients::{call} was not sent, and the run \
                         goes on after the next start"
                    ),
                });
            }
            if state.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(SessionError::Limit {
                    limit: "timeout",
                    message: format!(
                        "the run's time was up before clients::{call} could send its request"
                    ),
                });
            }
            if state.calls.len() as u64 >= u64::from(self.max_api_calls) {
                return Err(SessionError::Limit {
                    limit: "max_api_calls",
                    message: format!(
                        "the rule allows {} API calls a run; clients::{call} needs another",
                        self.max_api_calls
                    ),
                });
            }
        }
        let started = Instant::now();
        let result = request(self.backend.as_ref());
        let millis = started.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
        let (ok, status) = match &result {
            Ok(_) => (true, None),
            Err(e) => (false, e.status),
        };
        self.state().calls.push(ApiCall {
            operation,
            target: target.to_owned(),
            ok,
            status,
            millis,
        });
        result.map_err(|error| SessionError::Api { call, error })
    }

    fn remember(&self, client: &Client) {
        self.state().keep(client);
    }

    /// The client with this id, or `None`.
    pub fn get(&self, id: &str) -> Result<Option<Client>, SessionError> {
        let result = self.get_inner("get", id);
        self.remember_error(result)
    }

    fn get_inner(&self, call: &'static str, id: &str) -> Result<Option<Client>, SessionError> {
        if self.state().planned.contains(id) {
            return Ok(self.state().known.get(id).cloned());
        }
        let found = self.call(call, "get", id, |b| b.get(id))?;
        if let Some(client) = &found {
            self.remember(client);
        }
        Ok(found)
    }

    /// The current state of a client named by id, from this run's reads when it has one.
    fn current(&self, call: &'static str, id: &str) -> Result<Client, SessionError> {
        if let Some(client) = self.state().known.get(id).cloned() {
            return Ok(client);
        }
        self.get_inner(call, id)?
            .ok_or_else(|| SessionError::invalid(call, format!("no client with id {id}")))
    }

    /// Clients matching a query, paged through the backend and post-filtered to the
    /// script API's semantics.
    pub fn search(&self, query: &SearchQuery) -> Result<Vec<Client>, SessionError> {
        let result = self.search_inner("search", query);
        self.remember_error(result)
    }

    fn search_inner(
        &self,
        call: &'static str,
        query: &SearchQuery,
    ) -> Result<Vec<Client>, SessionError> {
        let requests = query.list_requests();
        let union = requests.len() > 1;

        let mut seen = HashSet::new();
        let mut found = Vec::new();
        'requests: for mut request in requests {
            loop {
                let target = format!("page {}", request.page);
                let page = self.call(call, "list", &target, |b| b.list(&request))?;
                let empty = page.clients.is_empty();
                for client in page.clients {
                    if query.matches(&client) && seen.insert(client.id.clone()) {
                        self.remember(&client);
                        found.push(client);
                        if !union && found.len() >= query.limit {
                            break 'requests;
                        }
                    }
                }
                match page.next {
                    Some(next) if !empty && next > request.page && request.page < MAX_PAGES => {
                        request.page = next;
                    }
                    _ => break,
                }
            }
        }
        if union {
            if let Some(sort) = query.sort {
                sort_clients(&mut found, sort);
            }
            found.truncate(query.limit);
        }

        // A plan run also sees the clients it would have created.
        if self.mode == Mode::Plan {
            let state = self.state();
            for id in &state.planned {
                if let Some(client) = state.known.get(id)
                    && query.matches(client)
                    && !seen.contains(id)
                    && found.len() < query.limit
                {
                    found.push(client.clone());
                }
            }
        }
        Ok(found)
    }

    /// The client whose email equals this one after normalizing, or `None`.
    pub fn find_by_email(&self, email: &str) -> Result<Option<Client>, SessionError> {
        let result = self.find_by_email_inner("find_by_email", email);
        self.remember_error(result)
    }

    fn find_by_email_inner(
        &self,
        call: &'static str,
        email: &str,
    ) -> Result<Option<Client>, SessionError> {
        let email = text::normalize_email(email);
        if email.is_empty() {
            return Ok(None);
        }
        let query = SearchQuery {
            email: Some(email),
            limit: 1,
            ..SearchQuery::default()
        };
        Ok(self.search_inner(call, &query)?.into_iter().next())
    }

    /// Creates a client. `null` fields are left out.
    pub fn create(&self, fields: Map<String, Value>) -> Result<Client, SessionError> {
        let result = self.create_inner("create", fields);
        self.remember_error(result)
    }

    fn create_inner(
        &self,
        call: &'static str,
        fields: Map<String, Value>,
    ) -> Result<Client, SessionError> {
        let fields = clean_fields(call, fields)?;
        self.check_changes(call, None)?;
        let email = fields
            .get("email")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let client = match self.mode {
            Mode::Live => {
                let target = email.clone().unwrap_or_else(|| "new client".into());
                let send = || self.call(call, "create", &target, |b| b.create(&fields));
                // A create with an email can be looked up, so one with an unknown
                // outcome is settled that way; one without is settled by not sending it.
                self.journaled(
                    "create",
                    fingerprint("create", "", &fields),
                    email.is_some(),
                    send,
                    || self.settle_create(call, &fields, send),
                )?
            }
            Mode::Plan => {
                let has_identity = ["email", "phone", "first_name"].iter().any(|k| {
                    fields
                        .get(*k)
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.trim().is_empty())
                });
                if !has_identity {
                    return Err(SessionError::Api {
                        call,
                        error: ApiError::unprocessable(
                            "create",
                            "email",
                            "a client needs at least one of email, phone or first_name",
                        ),
                    });
                }
                let mut state = self.state();
                let id = format!("new-{}", state.planned.len() + 1);
                state.planned.insert(id.clone());
                Client {
                    id,
                    attributes: fields.clone(),
                }
            }
        };
        let changes = fields
            .iter()
            .map(|(k, v)| FieldChange {
                field: k.clone(),
                before: Value::Null,
                after: v.clone(),
            })
            .collect();
        self.record_change(&client, ChangeKind::Created, email, changes);
        Ok(client)
    }

    /// A create that an earlier attempt was sending when it was cut off: the client is
    /// looked up (by its email, else by its phone with every other given field equal:
    /// the attempt stopped at the create, so nothing of its own changed the client since)
    /// and sent again only when it is not there. Without an email or a phone there is no
    /// telling, and it is not sent again.
    fn settle_create(
        &self,
        call: &'static str,
        fields: &Map<String, Value>,
        send: impl FnOnce() -> Result<Client, SessionError>,
    ) -> Result<Client, SessionError> {
        let given = |key: &str| {
            fields
                .get(key)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        if let Some(email) = given("email").map(text::normalize_email) {
            return match self.find_by_email_inner(call, &email)? {
                Some(client) => Ok(client),
                None => send(),
            };
        }
        let cannot_tell = |why: &str| SessionError::Api {
            call,
            error: ApiError {
                operation: "create",
                status: None,
                detail: format!(
                    "an earlier attempt of this job was stopped while creating this client, and \
                     {why}: it was not sent again; check the clients, then replay the event"
                ),
                pointer: None,
                transient: false,
            },
        };
        let Some(phone) = given("phone") else {
            return Err(cannot_tell(
                "without an email or a phone there is no looking it up",
            ));
        };
        let query = SearchQuery {
            phone: Some(phone.to_owned()),
            limit: 100,
            ..SearchQuery::default()
        };
        let found = self.search_inner(call, &query)?;
        match found.into_iter().find(|client| same_fields(client, fields)) {
            Some(client) => Ok(client),
            None => send(),
        }
    }

    fn check_changes(&self, call: &'static str, id: Option<&str>) -> Result<(), SessionError> {
        let Some(max) = self.max_changes else {
            return Ok(());
        };
        let state = self.state();
        let already = id.is_some_and(|id| state.changed.contains(id));
        if !already && state.changed.len() as u64 >= u64::from(max) {
            return Err(SessionError::Limit {
                limit: "max_changes",
                message: format!(
                    "the rule allows {max} changed clients a run; clients::{call} would change \
                     another"
                ),
            });
        }
        Ok(())
    }

    fn record_change(
        &self,
        client: &Client,
        kind: ChangeKind,
        email: Option<String>,
        fields: Vec<FieldChange>,
    ) {
        let mut state = self.state();
        state.changed.insert(client.id.clone());
        state.keep(client);
        state.changes.push(Change {
            client_id: client.id.clone(),
            kind,
            email,
            fields,
        });
    }

    /// Updates a client with the fields that differ from its current values; sends
    /// nothing when none differ. `email` may only repeat the current one.
    pub fn update(&self, id: &str, fields: Map<String, Value>) -> Result<Client, SessionError> {
        let result = self.update_inner("update", id, fields);
        self.remember_error(result)
    }

    fn update_inner(
        &self,
        call: &'static str,
        id: &str,
        fields: Map<String, Value>,
    ) -> Result<Client, SessionError> {
        let mut fields = clean_fields(call, fields)?;
        let current = self.current(call, id)?;
        if let Some(email) = fields.remove("email") {
            let wanted = email
                .as_str()
                .map(text::normalize_email)
                .unwrap_or_default();
            let have = current
                .str_attr("email")
                .map(text::normalize_email)
                .unwrap_or_default();
            if wanted != have {
                return Err(SessionError::invalid(
                    call,
                    format!(
                        "the email of a client cannot be changed (client {id} has {have:?}, \
                         the rule sent {wanted:?})"
                    ),
                ));
            }
        }
        let diff: Map<String, Value> = fields
            .into_iter()
            .filter(|(k, v)| !same_value(k, current.attributes.get(k).unwrap_or(&Value::Null), v))
            .collect();
        if diff.is_empty() {
            return Ok(current);
        }
        self.check_changes(call, Some(id))?;
        let updated = match self.mode {
            // An update sends values, not changes: sent twice, it writes them once.
            Mode::Live => {
                let send = || self.call(call, "update", id, |b| b.update(id, &diff));
                self.journaled(
                    "update",
                    fingerprint("update", id, &diff),
                    false,
                    send,
                    send,
                )?
            }
            Mode::Plan => {
                let mut client = current.clone();
                for (k, v) in &diff {
                    if v.is_null() {
                        client.attributes.remove(k);
                    } else {
                        client.attributes.insert(k.clone(), v.clone());
                    }
                }
                client
            }
        };
        let changes = diff
            .iter()
            .map(|(k, v)| FieldChange {
                field: k.clone(),
                before: current.attributes.get(k).cloned().unwrap_or(Value::Null),
                after: v.clone(),
            })
            .collect();
        self.record_change(&updated, ChangeKind::Updated, None, changes);
        Ok(updated)
    }

    /// Finds the client by email (or, without one, by phone), updates what differs, or
    /// creates it. Blank and null fields never overwrite a value; tags are added.
    pub fn upsert(&self, fields: Map<String, Value>) -> Result<Client, SessionError> {
        let result = self.upsert_inner(fields);
        self.remember_error(result)
    }

    fn upsert_inner(&self, fields: Map<String, Value>) -> Result<Client, SessionError> {
        let call = "upsert";
        let fields: Map<String, Value> = clean_fields(call, fields)?
            .into_iter()
            .filter(|(_, v)| !matches!(v, Value::String(s) if s.trim().is_empty()))
            .collect();
        let email = fields
            .get("email")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let phone = fields.get("phone").map(value_text).unwrap_or_default();
        let existing = if !email.is_empty() {
            self.find_by_email_inner(call, &email)?
        } else if !text::phone_digits(&phone)
            .trim_start_matches('+')
            .is_empty()
        {
            let query = SearchQuery {
                phone: Some(phone),
                limit: 1,
                ..SearchQuery::default()
            };
            self.search_inner(call, &query)?.into_iter().next()
        } else {
            None
        };
        match existing {
            None => self.create_inner(call, fields),
            Some(client) => {
                let mut changes = fields;
                changes.remove("email");
                if let Some(Value::Array(new_tags)) = changes.remove("tags") {
                    let mut tags = client.tags();
                    for tag in new_tags.iter().filter_map(Value::as_str) {
                        if !tags.iter().any(|t| text::normalize_label(t) == tag) {
                            tags.push(tag.to_owned());
                        }
                    }
                    changes.insert("tags".into(), tags.into_iter().map(Value::String).collect());
                }
                self.update_inner(call, &client.id, changes)
            }
        }
    }

    /// Uploads an image from the event's files as the client's image.
    pub fn set_image(
        &self,
        id: &str,
        file_id: &str,
        filename: &str,
    ) -> Result<Client, SessionError> {
        let result = self.set_image_inner(id, file_id, filename);
        self.remember_error(result)
    }

    fn set_image_inner(
        &self,
        id: &str,
        file_id: &str,
        filename: &str,
    ) -> Result<Client, SessionError> {
        let call = "set_image";
        let bytes = match &self.files {
            Some(files) => files
                .file_bytes(file_id)
                .map_err(|e| SessionError::invalid(call, format!("cannot read the file: {e}")))?,
            None => None,
        };
        let Some(bytes) = bytes else {
            return Err(SessionError::invalid(
                call,
                format!("the event has no uploaded file with id {file_id:?}"),
            ));
        };
        let size = bytes.len();
        let image =
            Image::new(filename, bytes).map_err(|e| SessionError::invalid(call, e.to_string()))?;
        let current = self.current(call, id)?;
        self.check_changes(call, Some(id))?;
        let updated = match self.mode {
            Mode::Live => {
                let what: Map<String, Value> = [
                    ("file".to_owned(), Value::from(file_id)),
                    ("filename".to_owned(), Value::from(filename)),
                    ("size".to_owned(), Value::from(size)),
                ]
                .into_iter()
                .collect();
                // The same image uploaded twice is the same image.
                let send = || {
                    self.call(call, "set_image", id, |b| {
                        b.set_image(id, &Map::new(), &image)
                    })
                };
                self.journaled(
                    "set_image",
                    fingerprint("set_image", id, &what),
                    false,
                    send,
                    send,
                )?
            }
            Mode::Plan => {
                let mut client = current.clone();
                client.attributes.insert(
                    "image_url".into(),
                    Value::from(format!("(upload of {filename})")),
                );
                client
            }
        };
        let change = FieldChange {
            field: "image_url".into(),
            before: current
                .attributes
                .get("image_url")
                .cloned()
                .unwrap_or(Value::Null),
            after: updated
                .attributes
                .get("image_url")
                .cloned()
                .unwrap_or(Value::Null),
        };
        self.record_change(&updated, ChangeKind::Updated, None, vec![change]);
        Ok(updated)
    }

    /// Adds tags to a client, sending nothing when it has them all.
    pub fn tag(&self, id: &str, tags: &[String]) -> Result<Client, SessionError> {
        let result = self.retag("tag", id, tags, true);
        self.remember_error(result)
    }

    /// Removes tags from a client, sending nothing when it has none of them.
    pub fn untag(&self, id: &str, tags: &[String]) -> Result<Client, SessionError> {
        let result = self.retag("untag", id, tags, false);
        self.remember_error(result)
    }

    fn retag(
        &self,
        call: &'static str,
        id: &str,
        tags: &[String],
        add: bool,
    ) -> Result<Client, SessionError> {
        let wanted: Vec<String> = tags
            .iter()
            .map(|t| text::normalize_label(t))
            .filter(|t| !t.is_empty())
            .collect();
        let current = self.current(call, id)?;
        let mut next = current.tags();
        // Sets, not scans: a long list costs linear time, never quadratic.
        let mut have: std::collections::HashSet<String> =
            next.iter().map(|t| text::normalize_label(t)).collect();
        if add {
            for tag in wanted {
                if have.insert(tag.clone()) {
                    next.push(tag);
                }
            }
            if next.len() > super::MAX_TAGS {
                return Err(SessionError::invalid(
                    call,
                    format!(
                        "client {id} would have {} tags; a client may have at most {}",
                        next.len(),
                        super::MAX_TAGS
                    ),
                ));
            }
        } else {
            let unwanted: std::collections::HashSet<String> = wanted.into_iter().collect();
            next.retain(|t| !unwanted.contains(&text::normalize_label(t)));
            have.clear();
        }
        if next == current.tags() {
            return Ok(current);
        }
        let mut fields = Map::new();
        fields.insert("tags".into(), next.into_iter().map(Value::String).collect());
        self.update_inner(call, id, fields)
    }
}

/// What identifies a write: the operation, the client and the fields, in key order.
fn fingerprint(operation: &str, id: &str, fields: &Map<String, Value>) -> String {
    let sorted: std::collections::BTreeMap<&String, &Value> = fields.iter().collect();
    format!(
        "{operation} {id} {}",
        serde_json::to_string(&sorted).unwrap_or_default()
    )
}

/// Sorts clients the way the API would, for results merged from several requests.
fn sort_clients(clients: &mut [Client], sort: Sort) {
    use super::SortKey;
    let key = |c: &Client| -> (String, String) {
        let first = c.str_attr("first_name").unwrap_or("").to_lowercase();
        let last = c.str_attr("last_name").unwrap_or("").to_lowercase();
        match sort.key {
            SortKey::FirstName => (first, String::new()),
            SortKey::LastName => (last, String::new()),
            SortKey::LastFirstName => (last, first),
        }
    };
    clients.sort_by(|a, b| {
        let ordering = key(a).cmp(&key(b));
        if sort.descending {
            ordering.reverse()
        } else {
            ordering
        }
    });
}

/// Whether a new value equals the current one as the API layer compares them.
fn same_value(field: &str, current: &Value, new: &Value) -> bool {
    match field {
        "email" => {
            current.as_str().map(text::normalize_email) == new.as_str().map(text::normalize_email)
        }
        "tags" => tag_list(current) == tag_list(new),
        _ => match (current, new) {
            (Value::Null, Value::String(s)) | (Value::String(s), Value::Null) => s.is_empty(),
            (Value::String(a), Value::String(b)) => a == b,
            (a, b) => a == b,
        },
    }
}

/// Checks and normalizes the fields a script passes to a write: read-only and null
/// fields are dropped, emails normalized, text attributes made strings, tags a list of
/// NFC strings.
fn clean_fields(
    call: &'static str,
    fields: Map<String, Value>,
) -> Result<Map<String, Value>, SessionError> {
    let mut out = Map::new();
    for (key, value) in fields {
        if READ_ONLY.contains(&key.as_str()) || value.is_null() {
            continue;
        }
        let value = if key == "email" {
            match value {
                Value::String(s) => Value::String(text::normalize_email(&s)),
                other => {
                    return Err(SessionError::invalid(
                        call,
                        format!("`email` must be a string, found {}", kind_of(&other)),
                    ));
                }
            }
        } else if key == "tags" {
            let list = match value {
                Value::String(s) => vec![Value::String(s)],
                Value::Array(items) => items,
                other => {
                    return Err(SessionError::invalid(
                        call,
                        format!(
                            "`tags` must be a list of strings, found {}",
                            kind_of(&other)
                        ),
                    ));
                }
            };
            let mut tags: Vec<String> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for item in list {
                match item {
                    Value::String(s) => {
                        let tag = text::normalize_label(&s);
                        if !tag.is_empty() && seen.insert(tag.clone()) {
                            tags.push(tag);
                        }
                        if tags.len() > super::MAX_TAGS {
                            return Err(SessionError::invalid(
                                call,
                                format!("`tags` may hold at most {} tags", super::MAX_TAGS),
                            ));
                        }
                    }
                    other => {
                        return Err(SessionError::invalid(
                            call,
                            format!("`tags` must hold strings, found {}", kind_of(&other)),
                        ));
                    }
                }
            }
            Value::Array(tags.into_iter().map(Value::String).collect())
        } else if TEXT_ATTRIBUTES.contains(&key.as_str()) {
            match value {
                Value::String(s) => Value::String(text::trim(&s)),
                Value::Number(n) => Value::String(n.to_string()),
                Value::Bool(b) => Value::String(b.to_string()),
                other => {
                    return Err(SessionError::invalid(
                        call,
                        format!("`{key}` must be a string, found {}", kind_of(&other)),
                    ));
                }
            }
        } else if super::json_depth(&value) > super::MAX_ATTRIBUTE_DEPTH {
            return Err(SessionError::invalid(
                call,
                format!(
                    "`{key}` nests more than {} levels deep",
                    super::MAX_ATTRIBUTE_DEPTH
                ),
            ));
        } else {
            value
        };
        out.insert(key, value);
    }
    Ok(out)
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// The page size the session asks for; kept here so tests can count requests.
pub const PAGE_SIZE: u32 = MAX_PAGE_SIZE;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::clients::embedded::EmbeddedStore;
    use serde_json::json;

    fn session_with(clients: Value) -> Session {
        let store = EmbeddedStore::in_memory().unwrap();
        let backend = store.company("default");
        let items: Vec<Map<String, Value>> = match clients {
            Value::Array(items) => items
                .into_iter()
                .filter_map(|v| v.as_object().cloned())
                .collect(),
            _ => Vec::new(),
        };
        backend.create_many(&items).unwrap();
        Session::new(Arc::new(backend), Mode::Plan, 100, None)
    }

    fn fields(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn emails_match_after_normalizing() {
        let s = session_with(json!([{"email": "jane@example.com", "first_name": "Jane"}]));
        for typed in [
            "Jane@Example.com ",
            "  JANE@EXAMPLE.COM",
            "ja\u{200B}ne@example.com",
            "\u{FEFF}jane@example.com\n",
        ] {
            let found = s.find_by_email(typed).unwrap();
            assert_eq!(
                found.and_then(|c| c.str_attr("first_name").map(str::to_owned)),
                Some("Jane".to_owned()),
                "{typed:?}"
            );
        }
        assert!(s.find_by_email("   ").unwrap().is_none());
        assert!(s.find_by_email("john@example.com").unwrap().is_none());
    }

    #[test]
    fn upsert_with_a_differently_written_email_updates_the_client() {
        let s = session_with(json!([{"email": "jane@example.com", "first_name": "Jane"}]));
        let client = s
            .upsert(fields(
                json!({"email": " Jane@Example.COM ", "last_name": "Baker"}),
            ))
            .unwrap();
        assert_eq!(client.str_attr("last_name"), Some("Baker"));
        let changes = s.changes();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].kind, ChangeKind::Updated, "no second client");
    }

    #[test]
    fn phones_match_whatever_their_punctuation() {
        let s = session_with(json!([{"phone": "(303) 555-0122", "first_name": "Dan"}]));
        let client = s
            .upsert(fields(
                json!({"phone": "+1 303.555.0122", "last_name": "Ortiz"}),
            ))
            .unwrap();
        assert_eq!(client.str_attr("first_name"), Some("Dan"));
        assert_eq!(s.changes()[0].kind, ChangeKind::Updated);
        let query = SearchQuery {
            phone: Some("3035550122".into()),
            limit: 10,
            ..SearchQuery::default()
        };
        assert_eq!(s.search(&query).unwrap().len(), 1);
        let other = SearchQuery {
            phone: Some("(303) 555-0199".into()),
            limit: 10,
            ..SearchQuery::default()
        };
        assert!(s.search(&other).unwrap().is_empty());
    }

    #[test]
    fn tags_match_in_nfc() {
        let s = session_with(json!([{"email": "a@example.com", "tags": ["Ren\u{e9}e"]}]));
        let client = s.find_by_email("a@example.com").unwrap().unwrap();
        // The decomposed form of the same tag: nothing to add.
        s.tag(&client.id, &["Rene\u{301}e".to_owned()]).unwrap();
        assert!(s.changes().is_empty(), "{:?}", s.changes());
        let query = SearchQuery {
            tags: vec![text::normalize_label("Rene\u{301}e")],
            limit: 10,
            ..SearchQuery::default()
        };
        assert_eq!(s.search(&query).unwrap().len(), 1);
    }

    #[test]
    fn plan_lines_read_as_a_diff() {
        let s = session_with(json!([{"email": "jane@example.com", "first_name": "Jane"}]));
        let jane = s.find_by_email("jane@example.com").unwrap().unwrap();
        s.update(&jane.id, fields(json!({"last_name": "Baker"})))
            .unwrap();
        s.tag(&jane.id, &["lead".to_owned()]).unwrap();
        s.create(fields(
            json!({"email": "new@example.com", "first_name": "Ana"}),
        ))
        .unwrap();
        let lines: Vec<String> = s.changes().iter().map(Change::describe).collect();
        assert_eq!(
            lines,
            vec![
                format!("~ client {}: last_name \"\" → \"Baker\"", jane.id),
                format!("~ client {}: tags +lead", jane.id),
                "+ create client new@example.com {first_name: Ana}".to_owned(),
            ]
        );
    }
}
