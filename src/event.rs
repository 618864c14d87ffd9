//! Events: what a trigger turns outside input into, and the `event` map scripts see.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Webhook,
    Schedule,
    Manual,
    Replay,
}

impl Source {
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Webhook => "webhook",
            Source::Schedule => "schedule",
            Source::Manual => "manual",
            Source::Replay => "replay",
        }
    }
}

/// A file part of a multipart delivery; its bytes are kept by the store under `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileMeta {
    pub id: String,
    pub field: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub size: u64,
}

/// The tick of a schedule that an event stands for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    /// The rule's cron expression, as written.
    pub cron: String,
    /// The rule's IANA time zone.
    pub timezone: String,
    /// The instant the tick was due.
    pub scheduled_for: DateTime<Utc>,
}

impl Tick {
    /// The `event.schedule` map of a script: the tick in UTC, and as the zone's wall time.
    fn to_script_value(&self) -> Value {
        let utc = self
            .scheduled_for
            .to_rfc3339_opts(SecondsFormat::Secs, true);
        let local = match self.timezone.parse::<chrono_tz::Tz>() {
            Ok(tz) => self
                .scheduled_for
                .with_timezone(&tz)
                .to_rfc3339_opts(SecondsFormat::Secs, false),
            Err(_) => utc.clone(),
        };
        let mut map = Map::new();
        map.insert("cron".into(), Value::String(self.cron.clone()));
        map.insert("timezone".into(), Value::String(self.timezone.clone()));
        map.insert("scheduled_for".into(), Value::String(utc));
        map.insert("local".into(), Value::String(local));
        Value::Object(map)
    }
}

/// One event. `raw` is kept apart from the rest, as the bytes received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub source: Source,
    pub received_at: DateTime<Utc>,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub query: Map<String, Value>,
    /// Lowercase names; repeated headers joined by `, `.
    #[serde(default)]
    pub headers: Map<String, Value>,
    #[serde(default)]
    pub body: Value,
    #[serde(default)]
    pub files: Vec<FileMeta>,
    #[serde(skip)]
    pub raw: Bytes,
    /// The tick, for an event of a schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Tick>,
}

impl Event {
    /// A new event id: time-ordered, so ids sort by arrival.
    pub fn new_id() -> String {
        uuid::Uuid::now_v7().to_string()
    }

    /// An event made by hand (`clientrules run`, rule tests) from a map with any of
    /// `body`, `headers`, `query`, `path`, `method`.
    pub fn manual(spec: &Map<String, Value>) -> Event {
        let map_of = |key: &str| -> Map<String, Value> {
            match spec.get(key) {
                Some(Value::Object(m)) => m.clone(),
                _ => Map::new(),
            }
        };
        let headers = map_of("headers")
            .into_iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (k.to_ascii_lowercase(), Value::String(text))
            })
            .collect();
        let body = spec.get("body").cloned().unwrap_or(Value::Null);
        let raw = match &body {
            Value::String(s) => Bytes::from(s.clone()),
            Value::Null => Bytes::new(),
            other => Bytes::from(other.to_string()),
        };
        Event {
            id: Event::new_id(),
            source: Source::Manual,
            received_at: Utc::now(),
            path: spec
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            method: spec
                .get("method")
                .and_then(Value::as_str)
                .unwrap_or("POST")
                .to_owned(),
            query: map_of("query"),
            headers,
            body,
            files: Vec::new(),
            raw,
            schedule: None,
        }
    }

    /// The event of a schedule's tick.
    pub fn scheduled(tick: Tick, received_at: DateTime<Utc>) -> Event {
        Event {
            id: Event::new_id(),
            source: Source::Schedule,
            received_at,
            path: String::new(),
            method: String::new(),
            query: Map::new(),
            headers: Map::new(),
            body: Value::Null,
            files: Vec::new(),
            raw: Bytes::new(),
            schedule: Some(tick),
        }
    }

    /// The `event` map of a script.
    pub fn to_script_value(&self) -> Value {
        let mut map = Map::new();
        map.insert("id".into(), Value::String(self.id.clone()));
        map.insert("source".into(), Value::String(self.source.as_str().into()));
        map.insert(
            "received_at".into(),
            Value::String(
                self.received_at
                    .to_rfc3339_opts(SecondsFormat::Millis, true),
            ),
        );
        map.insert("path".into(), Value::String(self.path.clone()));
        map.insert("method".into(), Value::String(self.method.clone()));
        map.insert("query".into(), Value::Object(self.query.clone()));
        map.insert("headers".into(), Value::Object(self.headers.clone()));
        map.insert("body".into(), self.body.clone());
        let files = self
            .files
            .iter()
            .map(|f| serde_json::to_value(f).unwrap_or(Value::Null))
            .collect();
        map.insert("files".into(), Value::Array(files));
        map.insert(
            "raw".into(),
            Value::String(String::from_utf8_lossy(&self.raw).into_owned()),
        );
        if let Some(tick) = &self.schedule {
            map.insert("schedule".into(), tick.to_script_value());
        }
        Value::Object(map)
    }
}
