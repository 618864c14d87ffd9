//! Backtests: the stored events of a rule run again through the rule as it is on disk
//! now, in plan mode, and the outcome compared with what the recorded run did.
//!
//! Each event runs against the clients as they were just before its recorded run, as
//! far as that run changed them: the clients it created are hidden and the fields it
//! changed are set back. Changes made later by other runs or by people stay, so a
//! difference can also come from them; the examples show both sides to tell.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::clients::session::{Mode, Session};
use crate::clients::{ApiError, Backend, Client, ListQuery, Page, image};
use crate::rules::Rule;
use crate::script;
use crate::store::{RunFilter, Store};

/// How many examples each kind of difference keeps.
const EXAMPLES: usize = 3;

/// What a run did, reduced to what two runs of the same event can be compared on.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Effect {
    pub status: String,
    /// The final value of each changed field, by client: `client <id>` for a client
    /// that existed, `new <email>` for one the run created.
    pub clients: BTreeMap<String, BTreeMap<String, Value>>,
    /// The plan lines, for people.
    pub lines: Vec<String>,
}

/// One event whose outcome differs.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub event_id: String,
    pub received_at: DateTime<Utc>,
    /// What differs: `status`, `clients changed`, or a field name such as `tags`.
    pub kinds: Vec<String>,
    pub recorded: Effect,
    pub now: Effect,
}

/// The outcome of a backtest.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub rule: String,
    /// Events compared: stored events of the rule that have a recorded run.
    pub events: usize,
    /// Stored events without a recorded run yet, left out.
    pub not_run: usize,
    pub same: usize,
    /// How many events differ in each way.
    pub counts: BTreeMap<String, usize>,
    /// The first events of each kind of difference.
    pub examples: Vec<Difference>,
}

impl Report {
    pub fn differing(&self) -> usize {
        self.events - self.same
    }
}

/// Runs the stored events of `rule` received at or after `since` (at most `limit`,
/// newest first) through `rule` in plan mode, and compares each with its recorded run.
pub fn backtest(
    rule: &Rule,
    store: &Arc<dyn Store>,
    backend: Arc<dyn Backend>,
    since: Option<DateTime<Utc>>,
    limit: usize,
) -> Result<Report, crate::store::StoreError> {
    let mut report = Report {
        rule: rule.name.clone(),
        ..Report::default()
    };
    let mut examples_of: HashMap<String, usize> = HashMap::new();
    for summary in store.events(Some(&rule.name), limit)? {
        if since.is_some_and(|since| summary.received_at < since) {
            continue;
        }
        let Some(event) = store.event(&summary.id)? else {
            continue;
        };
        let filter = RunFilter {
            rule: Some(rule.name.clone()),
            event_id: Some(summary.id.clone()),
            limit: 1,
            ..RunFilter::default()
        };
        let Some(run) = store.runs(&filter)?.into_iter().next() else {
            report.not_run += 1;
            continue;
        };
        report.events += 1;
        let recorded = recorded_effect(&run.record);

        let rewound = Arc::new(Rewound::of(backend.clone(), &run.record));
        let session = Arc::new(
            Session::new(
                rewound,
                Mode::Plan,
                rule.limits.max_api_calls,
                rule.limits.max_changes,
            )
            .with_files(Arc::new(StoredFiles(store.clone()))),
        );
        let outcome = script::run(rule, &event.to_script_value(), session.clone(), None);
        let changes = serde_json::to_value(session.changes()).unwrap_or(Value::Null);
        let now = effect(outcome.status.as_str(), &changes);

        let kinds = differences(&recorded, &now);
        if kinds.is_empty() {
            report.same += 1;
            continue;
        }
        let mut wanted = false;
        for kind in &kinds {
            *report.counts.entry(kind.clone()).or_default() += 1;
            let shown = examples_of.entry(kind.clone()).or_default();
            if *shown < EXAMPLES {
                *shown += 1;
                wanted = true;
            }
        }
        if wanted {
            report.examples.push(Difference {
                event_id: summary.id,
                received_at: summary.received_at,
                kinds,
                recorded,
                now,
            });
        }
    }
    Ok(report)
}

/// The effect of a stored run record.
fn recorded_effect(record: &Value) -> Effect {
    let status = record["status"].as_str().unwrap_or("unknown");
    effect(status, &record["changes"])
}

/// The effect of a run from its status and its changes as JSON (the shape of
/// [`crate::clients::session::Change`]).
fn effect(status: &str, changes: &Value) -> Effect {
    let mut out = Effect {
        status: status.to_owned(),
        ..Effect::default()
    };
    // Ids of clients a run created, for naming them by email instead.
    let mut created: HashMap<String, String> = HashMap::new();
    for change in changes.as_array().into_iter().flatten() {
        let id = change["client_id"].as_str().unwrap_or("?").to_owned();
        let who = if change["kind"] == "created" {
            let email = change["email"].as_str().unwrap_or("");
            let key = format!("new {}", if email.is_empty() { &id } else { email });
            created.insert(id.clone(), key.clone());
            key
        } else {
            created
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("client {id}"))
        };
        let fields = out.clients.entry(who).or_default();
        for field in change["fields"].as_array().into_iter().flatten() {
            let name = field["field"].as_str().unwrap_or("?").to_owned();
            fields.insert(name, comparable(&field["after"]));
        }
        if let Ok(change) = serde_json::from_value::<LineOf>(change.clone()) {
            out.lines.push(change.line());
        }
    }
    out
}

/// A value as two runs are compared on: an empty string is no value, tags a set.
fn comparable(value: &Value) -> Value {
    match value {
        Value::String(s) if s.is_empty() => Value::Null,
        Value::Array(items) => {
            let set: BTreeSet<String> = items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            Value::Array(set.into_iter().map(Value::String).collect())
        }
        other => other.clone(),
    }
}

/// The kinds of difference between two effects, in a stable order.
fn differences(recorded: &Effect, now: &Effect) -> Vec<String> {
    let mut kinds = BTreeSet::new();
    if recorded.status != now.status {
        kinds.insert("status".to_owned());
    }
    let who: BTreeSet<&String> = recorded.clients.keys().chain(now.clients.keys()).collect();
    for client in who {
        match (recorded.clients.get(client), now.clients.get(client)) {
            (Some(a), Some(b)) => {
                let fields: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for field in fields {
                    if a.get(field).unwrap_or(&Value::Null) != b.get(field).unwrap_or(&Value::Null)
                    {
                        kinds.insert(field.clone());
                    }
                }
            }
            _ => {
                kinds.insert("clients changed".to_owned());
            }
        }
    }
    kinds.into_iter().collect()
}

/// Enough of a change to write its plan line again.
#[derive(Debug, serde::Deserialize)]
struct LineOf {
    client_id: String,
    kind: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    fields: Vec<FieldOf>,
}

#[derive(Debug, serde::Deserialize)]
struct FieldOf {
    field: String,
    #[serde(default)]
    before: Value,
    #[serde(default)]
    after: Value,
}

impl LineOf {
    fn line(self) -> String {
        crate::clients::session::Change {
            client_id: self.client_id,
            kind: if self.kind == "created" {
                crate::clients::session::ChangeKind::Created
            } else {
                crate::clients::session::ChangeKind::Updated
            },
            email: self.email,
            fields: self
                .fields
                .into_iter()
                .map(|f| crate::clients::session::FieldChange {
                    field: f.field,
                    before: f.before,
                    after: f.after,
                })
                .collect(),
        }
        .describe()
    }
}

/// The clients as they were before one recorded run, as far as that run changed them:
/// reads go to the real backend, the run's creations are hidden and its changed fields
/// set back. Never writes.
struct Rewound {
    inner: Arc<dyn Backend>,
    created: HashSet<String>,
    before: HashMap<String, Map<String, Value>>,
}

impl Rewound {
    fn of(inner: Arc<dyn Backend>, record: &Value) -> Rewound {
        let mut created = HashSet::new();
        let mut before: HashMap<String, Map<String, Value>> = HashMap::new();
        for change in record["changes"].as_array().into_iter().flatten() {
            let Some(id) = change["client_id"].as_str() else {
                continue;
            };
            if change["kind"] == "created" {
                created.insert(id.to_owned());
                continue;
            }
            let fields = before.entry(id.to_owned()).or_default();
            for field in change["fields"].as_array().into_iter().flatten() {
                if let Some(name) = field["field"].as_str() {
                    // The first change of a field holds its value before the run.
                    fields
                        .entry(name.to_owned())
                        .or_insert_with(|| field["before"].clone());
                }
            }
        }
        Rewound {
            inner,
            created,
            before,
        }
    }

    fn rewind(&self, mut client: Client) -> Client {
        if let Some(fields) = self.before.get(&client.id) {
            for (name, value) in fields {
                if value.is_null() {
                    client.attributes.remove(name);
                } else {
                    client.attributes.insert(name.clone(), value.clone());
                }
            }
        }
        client
    }
}

impl Backend for Rewound {
    fn list(&self, query: &ListQuery) -> Result<Page, ApiError> {
        let mut page = self.inner.list(query)?;
        page.clients = page
            .clients
            .into_iter()
            .filter(|c| !self.created.contains(&c.id))
            .map(|c| self.rewind(c))
            .collect();
        Ok(page)
    }

    fn get(&self, id: &str) -> Result<Option<Client>, ApiError> {
        if self.created.contains(id) {
            return Ok(None);
        }
        Ok(self.inner.get(id)?.map(|c| self.rewind(c)))
    }

    fn create(&self, _: &Map<String, Value>) -> Result<Client, ApiError> {
        Err(ApiError::invalid("create", 405, "a backtest never writes"))
    }

    fn update(&self, _: &str, _: &Map<String, Value>) -> Result<Client, ApiError> {
        Err(ApiError::invalid("update", 405, "a backtest never writes"))
    }

    fn set_image(
        &self,
        _: &str,
        _: &Map<String, Value>,
        _: &image::Image,
    ) -> Result<Client, ApiError> {
        Err(ApiError::invalid(
            "set_image",
            405,
            "a backtest never writes",
        ))
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }
}

/// The files of stored events, for rules that check an upload.
struct StoredFiles(Arc<dyn Store>);

impl crate::clients::session::FileSource for StoredFiles {
    fn file_bytes(&self, id: &str) -> Result<Option<bytes::Bytes>, String> {
        self.0.uploaded_file(id).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn effects_compare_final_values_and_name_the_fields_that_differ() {
        let recorded = effect(
            "succeeded",
            &json!([
                {"client_id": "7", "kind": "created", "email": "a@example.com",
                 "fields": [{"field": "email", "before": null, "after": "a@example.com"}]},
                {"client_id": "7", "kind": "updated",
                 "fields": [{"field": "tags", "before": null, "after": ["lead", "web"]}]},
                {"client_id": "3", "kind": "updated",
                 "fields": [{"field": "last_name", "before": null, "after": "Baker"}]}
            ]),
        );
        assert_eq!(recorded.lines.len(), 3);
        assert_eq!(recorded.lines[1], "~ client 7: tags +lead +web");

        let same = effect(
            "succeeded",
            &json!([
                {"client_id": "new-1", "kind": "created", "email": "a@example.com",
                 "fields": [{"field": "email", "before": null, "after": "a@example.com"}]},
                {"client_id": "new-1", "kind": "updated",
                 "fields": [{"field": "tags", "before": null, "after": ["web", "lead"]}]},
                {"client_id": "3", "kind": "updated",
                 "fields": [{"field": "last_name", "before": "", "after": "Baker"}]}
            ]),
        );
        assert!(
            differences(&recorded, &same).is_empty(),
            "ids of new clients differ"
        );

        let other = effect(
            "skipped",
            &json!([
                {"client_id": "3", "kind": "updated",
                 "fields": [{"field": "last_name", "before": null, "after": "Baker-Ray"}]}
            ]),
        );
        assert_eq!(
            differences(&recorded, &other),
            ["clients changed", "last_name", "status"]
        );
    }

    #[test]
    fn a_rewound_backend_hides_creations_and_sets_fields_back() {
        let store = crate::clients::embedded::EmbeddedStore::in_memory().unwrap();
        let backend = store.company("default");
        let made = backend
            .create_many(&[
                json!({"email": "a@example.com", "last_name": "Baker", "tags": ["x"]})
                    .as_object()
                    .cloned()
                    .unwrap(),
                json!({"email": "b@example.com"})
                    .as_object()
                    .cloned()
                    .unwrap(),
            ])
            .unwrap();
        let record = json!({"changes": [
            {"client_id": made[0].id, "kind": "updated",
             "fields": [{"field": "last_name", "before": null, "after": "Baker"},
                        {"field": "tags", "before": [], "after": ["x"]}]},
            {"client_id": made[1].id, "kind": "created", "fields": []}
        ]});
        let rewound = Rewound::of(Arc::new(backend), &record);
        let a = rewound.get(&made[0].id).unwrap().unwrap();
        assert_eq!(a.str_attr("last_name"), None);
        assert!(a.tags().is_empty());
        assert!(rewound.get(&made[1].id).unwrap().is_none());
        let page = rewound.list(&ListQuery::first_page()).unwrap();
        assert_eq!(page.clients.len(), 1);
        assert!(rewound.create(&Map::new()).is_err());
    }
}
