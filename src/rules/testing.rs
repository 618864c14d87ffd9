//! Running the tests kept in rule files: each test's event runs through its rule on a
//! fresh embedded store seeded with the test's clients, and what the run leaves behind
//! is compared with what the test expects.

use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{Rule, ScheduleTrigger, TestSpec};
use crate::clients::embedded::EmbeddedStore;
use crate::clients::session::{Mode, Session};
use crate::clients::{Backend, ListQuery};
use crate::event::Event;
use crate::script::{self, RunStatus};

/// The result of one test.
#[derive(Debug, Clone)]
pub struct TestResult {
    pub rule: String,
    pub test: String,
    /// Empty when the test passed; otherwise one readable paragraph per mismatch.
    pub failures: Vec<String>,
}

impl TestResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs one test of a rule.
pub fn run_test(rule: &Rule, test: &TestSpec) -> TestResult {
    let mut result = TestResult {
        rule: rule.name.clone(),
        test: test.name.clone(),
        failures: Vec::new(),
    };
    if let Err(message) = run_inner(rule, test, &mut result.failures) {
        result.failures.push(message);
    }
    result
}

fn run_inner(rule: &Rule, test: &TestSpec, failures: &mut Vec<String>) -> Result<(), String> {
    let store = EmbeddedStore::in_memory().map_err(|e| format!("cannot open a test store: {e}"))?;
    let backend = store.company("default");
    if !test.given.clients.is_empty() {
        backend
            .create_many(&test.given.clients)
            .map_err(|e| format!("cannot create the given clients: {e}"))?;
    }
    let backend: Arc<dyn Backend> = Arc::new(backend);

    let mut event = Event::manual(&test.event);
    if event.path.is_empty()
        && let Some(hook) = rule.webhook()
    {
        event.path = hook.path.clone();
    }
    if let Some(trigger) = rule.schedule() {
        event = tick_of(trigger, &test.event)?;
    }
    // A fresh store per test: real writes are what the test observes.
    let session = Arc::new(Session::new(
        backend.clone(),
        Mode::Live,
        rule.limits.max_api_calls,
        rule.limits.max_changes,
    ));
    let outcome = script::run(rule, &event.to_script_value(), session.clone(), None);

    let expected_status = test.expect.status.as_deref().unwrap_or("succeeded");
    if outcome.status.as_str() != expected_status {
        let mut text = format!(
            "status: expected {expected_status}, found {}",
            outcome.status.as_str()
        );
        if let Some(e) = &outcome.error {
            let _ = write!(text, "\n    error: {e}");
        }
        if let Some(reason) = &outcome.reason {
            let _ = write!(text, "\n    reason: {reason}");
        }
        failures.push(text);
    } else if outcome.status == RunStatus::Failed && outcome.error.is_none() {
        failures.push("status: failed without an error".into());
    }

    if let Some(expected) = &test.expect.clients {
        let actual = all_clients(backend.as_ref())?;
        compare_clients(expected, &actual, failures);
    }

    if let Some(expected) = &test.expect.plan {
        let writes: Vec<String> = session.changes().iter().map(|c| c.describe()).collect();
        let matches = expected.len() == writes.len()
            && expected
                .iter()
                .zip(&writes)
                .all(|(e, w)| w.contains(e.as_str()));
        if !matches {
            let mut text = String::from("plan: the writes differ\n    expected:");
            for e in expected {
                let _ = write!(text, "\n      {e}");
            }
            text.push_str("\n    found:");
            if writes.is_empty() {
                text.push_str("\n      (no writes)");
            }
            for w in &writes {
                let _ = write!(text, "\n      {w}");
            }
            failures.push(text);
        }
    }

    if let Some(expected) = &test.expect.logs {
        for line in expected {
            if !outcome
                .logs
                .iter()
                .any(|l| l.message.contains(line.as_str()))
            {
                let mut text = format!("logs: no line contains {line:?}\n    found:");
                if outcome.logs.is_empty() {
                    text.push_str("\n      (no log lines)");
                }
                for l in &outcome.logs {
                    let _ = write!(text, "\n      {}: {}", l.level, l.message);
                }
                failures.push(text);
            }
        }
    }
    Ok(())
}

/// The event of a scheduled rule's test: a tick, at `event.schedule.scheduled_for` when
/// the test gives one (RFC 3339), else now.
fn tick_of(trigger: &ScheduleTrigger, spec: &Map<String, Value>) -> Result<Event, String> {
    let now = chrono::Utc::now();
    let at = match spec.get("schedule").and_then(|s| s.get("scheduled_for")) {
        None => now,
        Some(Value::String(text)) => chrono::DateTime::parse_from_rfc3339(text)
            .map_err(|e| {
                format!(
                    "event.schedule.scheduled_for: expected an RFC 3339 time, found {text:?}: {e}"
                )
            })?
            .with_timezone(&chrono::Utc),
        Some(other) => {
            return Err(format!(
                "event.schedule.scheduled_for: expected an RFC 3339 time, found {other}"
            ));
        }
    };
    Ok(crate::triggers::schedule::tick_event(trigger, at, now))
}

fn all_clients(backend: &dyn Backend) -> Result<Vec<Map<String, Value>>, String> {
    let mut query = ListQuery::first_page();
    let mut out = Vec::new();
    loop {
        let page = backend.list(&query).map_err(|e| e.to_string())?;
        let empty = page.clients.is_empty();
        out.extend(page.clients.iter().map(|c| c.to_flat()));
        match page.next {
            Some(next) if !empty && next > query.page => query.page = next,
            _ => return Ok(out),
        }
    }
}

/// Whether an actual value matches an expected one: strings equal after trimming,
/// lists equal as sets, maps by their expected keys, anything else exactly.
fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Null, Value::Null) => true,
        (Value::Null, Value::String(s)) => s.is_empty(),
        (Value::String(e), Value::String(a)) => e.trim() == a.trim(),
        (Value::Number(e), Value::String(a)) => e.to_string() == *a,
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().all(|x| a.iter().any(|y| matches(x, y)))
        }
        (Value::Object(e), Value::Object(a)) => e
            .iter()
            .all(|(k, v)| matches(v, a.get(k).unwrap_or(&Value::Null))),
        (e, a) => e == a,
    }
}

fn mismatched_fields<'a>(
    expected: &'a Map<String, Value>,
    actual: &Map<String, Value>,
) -> Vec<&'a str> {
    expected
        .iter()
        .filter(|(k, v)| !matches(v, actual.get(*k).unwrap_or(&Value::Null)))
        .map(|(k, _)| k.as_str())
        .collect()
}

fn compare_clients(
    expected: &[Map<String, Value>],
    actual: &[Map<String, Value>],
    failures: &mut Vec<String>,
) {
    let mut unused: Vec<&Map<String, Value>> = actual.iter().collect();
    for want in expected {
        if let Some(at) = unused
            .iter()
            .position(|a| mismatched_fields(want, a).is_empty())
        {
            unused.remove(at);
            continue;
        }
        // Show the closest client, field by field.
        let closest = unused
            .iter()
            .min_by_key(|a| mismatched_fields(want, a).len())
            .copied();
        let mut text = String::from("clients: no client matches\n");
        match closest {
            None => {
                text.push_str("    expected:\n");
                for (k, v) in want {
                    let _ = writeln!(text, "      {k}: {v}");
                }
                text.push_str("    found: no clients left to compare");
            }
            Some(found) => {
                let differ = mismatched_fields(want, found);
                text.push_str("    the closest client differs (- expected, + found):\n");
                for (k, v) in want {
                    if differ.contains(&k.as_str()) {
                        let got = found.get(k).cloned().unwrap_or(Value::Null);
                        let _ = writeln!(text, "    - {k}: {v}");
                        let _ = writeln!(text, "    + {k}: {got}");
                    } else {
                        let _ = writeln!(text, "      {k}: {v}");
                    }
                }
                text.truncate(text.trim_end().len());
            }
        }
        failures.push(text);
    }
    if !unused.is_empty() && expected.len() < actual.len() {
        let mut text = format!(
            "clients: expected {} client{}, found {}; not expected:",
            expected.len(),
            if expected.len() == 1 { "" } else { "s" },
            actual.len()
        );
        for extra in unused {
            let email = extra
                .get("email")
                .and_then(Value::as_str)
                .unwrap_or("(no email)");
            let id = extra.get("id").and_then(Value::as_str).unwrap_or("?");
            let _ = write!(text, "\n      client {id} {email}");
        }
        failures.push(text);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn tags_compare_as_sets_and_missing_fields_fail() {
        assert!(matches(&json!(["a", "b"]), &json!(["b", "a"])));
        assert!(!matches(&json!(["a"]), &json!(["a", "b"])));
        assert!(!matches(&json!("x"), &Value::Null));
    }

    #[test]
    fn a_mismatch_shows_expected_and_found_lines() {
        let mut failures = Vec::new();
        compare_clients(
            &[map(json!({"email": "a@example.com", "tags": ["lead"]}))],
            &[map(
                json!({"id": "1", "email": "a@example.com", "tags": ["other"]}),
            )],
            &mut failures,
        );
        assert_eq!(failures.len(), 1);
        let text = &failures[0];
        assert!(text.contains("- tags: [\"lead\"]"), "{text}");
        assert!(text.contains("+ tags: [\"other\"]"), "{text}");
    }

    #[test]
    fn extra_clients_fail_when_fewer_are_expected() {
        let mut failures = Vec::new();
        compare_clients(
            &[],
            &[map(json!({"id": "1", "email": "a@example.com"}))],
            &mut failures,
        );
        assert_eq!(failures.len(), 1);
        assert!(
            failures[0].contains("client 1 a@example.com"),
            "{}",
            failures[0]
        );
    }
}
