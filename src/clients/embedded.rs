//! The embedded backend: clients kept in SQLite under Spectora's rules (global buyers,
//! per-company contacts), so the service runs without an API key and the simulator
//! has something faithful to serve.
//!
//! Tables (all prefixed `client_`, so they sit safely beside the service's other tables
//! in the same file):
//!
//! - `client_buyers`: the global buyer records, one per normalized email (or one per
//!   contact created without an email).
//! - `client_contacts`: one row per client of a company. The writable attributes are kept
//!   whole as JSON, so unknown attributes survive; the columns beside the JSON are derived
//!   from it for filtering and sorting with indexes.
//! - `client_tags`: one row per (contact, tag), indexed by (company, tag), so the tag
//!   filter never parses JSON.
//!
//! Ids are global: one integer sequence across every company (the rowid of
//! `client_contacts`, which only grows because nothing deletes contacts), so ids increase
//! within a company too, and a contact id never names clients of two companies.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior};
use serde_json::{Map, Value};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::image::Image;
use super::{
    ApiError, Backend, Client, ListQuery, MAX_ATTRIBUTE_DEPTH, MAX_PAGE_SIZE, MAX_TAGS, Page,
    READ_ONLY, SortKey, json_depth, refuse_email_change,
};
use crate::text;
use crate::write_turn::Turn;

/// How long a write waits for another connection's lock before it gives up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Known attributes whose value must be a string (or null, to clear it).
const STRING_ATTRIBUTES: &[&str] = &[
    "first_name",
    "last_name",
    "email",
    "phone",
    "mobile_phone",
    "home_phone",
    "notes",
    "private_notes",
];

/// The attributes that fulltext searches, in the order they are joined.
const SEARCHED_ATTRIBUTES: &[&str] = &["email", "phone", "mobile_phone", "home_phone"];

/// Separates the fields of the search column: a control character that no name, email
/// or phone holds, so a match cannot straddle two fields.
const SEARCH_SEPARATOR: char = '\u{1f}';

/// Tables and indexes, created when missing. `IF NOT EXISTS` everywhere: opening an
/// existing file must neither fail nor touch data.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS client_buyers (
    id          INTEGER PRIMARY KEY,
    email       TEXT UNIQUE,
    created_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS client_contacts (
    id          INTEGER PRIMARY KEY,
    company     TEXT NOT NULL,
    buyer_id    INTEGER NOT NULL REFERENCES client_buyers(id),
    attributes  TEXT NOT NULL,
    image_url   TEXT,
    first_key   TEXT NOT NULL,
    last_key    TEXT NOT NULL,
    search      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    UNIQUE (company, buyer_id)
);
CREATE INDEX IF NOT EXISTS client_contacts_by_company
    ON client_contacts (company);
CREATE INDEX IF NOT EXISTS client_contacts_by_first
    ON client_contacts (company, first_key);
CREATE INDEX IF NOT EXISTS client_contacts_by_last
    ON client_contacts (company, last_key);
CREATE INDEX IF NOT EXISTS client_contacts_by_last_first
    ON client_contacts (company, last_key, first_key);
CREATE TABLE IF NOT EXISTS client_tags (
    contact_id  INTEGER NOT NULL REFERENCES client_contacts(id),
    company     TEXT NOT NULL,
    tag         TEXT NOT NULL,
    PRIMARY KEY (contact_id, tag)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS client_tags_by_tag
    ON client_tags (company, tag, contact_id);
CREATE TABLE IF NOT EXISTS client_images (
    contact_id  INTEGER PRIMARY KEY REFERENCES client_contacts(id),
    filename    TEXT NOT NULL,
    media_type  TEXT NOT NULL,
    bytes       BLOB NOT NULL
);
";

/// Where stored images are served from when nothing else is said: a path, so that the
/// `image_url` of a client reads `/images/<id>/<file name>`.
pub const DEFAULT_IMAGE_BASE: &str = "/images";

/// Why the embedded store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// The database file could not be opened or configured.
    #[error("cannot open the client database {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The client tables could not be created.
    #[error("cannot create the client tables: {0}")]
    Schema(#[source] rusqlite::Error),
}

/// The embedded client database: owns the SQLite connection that every
/// [`EmbeddedBackend`] of every company shares.
#[derive(Clone)]
pub struct EmbeddedStore {
    conn: Arc<Mutex<Connection>>,
    image_base: Arc<str>,
    /// The file's write turn, shared with the service's store; none in memory.
    turn: Option<Turn>,
}

/// A client's stored image, as it was uploaded.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredImage {
    pub filename: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

impl fmt::Debug for StoredImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredImage")
            .field("filename", &self.filename)
            .field("media_type", &self.media_type)
            .field("size", &self.bytes.len())
            .finish()
    }
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the connection: its Debug would need the lock.
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the database file at `path` and creates the client tables if
    /// they are missing. WAL journal, `synchronous=FULL`, a busy timeout of 5 s.
    pub fn open(path: &Path) -> Result<EmbeddedStore, EmbeddedError> {
        let open_error = |source| EmbeddedError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(open_error)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
        // journal_mode answers with a row, so it goes through the checked variant.
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
            .map_err(open_error)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_error)?;
        let mut store = EmbeddedStore::with_connection(conn)?;
        store.turn = Some(Turn::for_file(path));
        Ok(store)
    }

    /// A store in memory, gone when the last handle is dropped: for tests and dry runs.
    pub fn in_memory() -> Result<EmbeddedStore, EmbeddedError> {
        let open_error = |source| EmbeddedError::Open {
            path: PathBuf::from(":memory:"),
            source,
        };
        let conn = Connection::open_in_memory().map_err(open_error)?;
        EmbeddedStore::with_connection(conn)
    }

    fn with_connection(conn: Connection) -> Result<EmbeddedStore, EmbeddedError> {
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(EmbeddedError::Schema)?;
        conn.execute_batch(SCHEMA).map_err(EmbeddedError::Schema)?;
        Ok(EmbeddedStore {
            conn: Arc::new(Mutex::new(conn)),
            image_base: Arc::from(DEFAULT_IMAGE_BASE),
            turn: None,
        })
    }

    /// The same store, with images served under `base` (a URL or a path, without the
    /// trailing `/`): the simulator passes its own address.
    pub fn with_image_base(mut self, base: &str) -> EmbeddedStore {
        self.image_base = Arc::from(base.trim_end_matches('/'));
        self
    }

    /// The image stored for a contact of any company (ids are global), or `None`.
    pub fn image(&self, contact_id: &str) -> Result<Option<StoredImage>, ApiError> {
        let Some(id) = parse_id(contact_id.trim()) else {
            return Ok(None);
        };
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        conn.query_row(
            "SELECT filename, media_type, bytes FROM client_images WHERE contact_id = ?1",
            [id],
            |row| {
                Ok(StoredImage {
                    filename: row.get(0)?,
                    media_type: row.get(1)?,
                    bytes: row.get(2)?,
                })
            },
        )
        .optional()
        .map_err(storage("get"))
    }

    /// The backend of one company: it sees and writes only that company's contacts,
    /// and shares the global buyers with every other company.
    pub fn company(&self, company: &str) -> EmbeddedBackend {
        EmbeddedBackend {
            conn: Arc::clone(&self.conn),
            company: Arc::from(company),
            image_base: Arc::clone(&self.image_base),
            turn: self.turn.clone(),
        }
    }
}

/// A [`Backend`] over the embedded store, scoped to one company.
#[derive(Clone)]
pub struct EmbeddedBackend {
    conn: Arc<Mutex<Connection>>,
    company: Arc<str>,
    image_base: Arc<str>,
    turn: Option<Turn>,
}

impl fmt::Debug for EmbeddedBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedBackend")
            .field("company", &self.company)
            .finish_non_exhaustive()
    }
}

impl EmbeddedBackend {
    /// The company this backend is scoped to.
    pub fn company(&self) -> &str {
        &self.company
    }

    /// Creates every client in one transaction, under the same rules as
    /// [`Backend::create`]. All or nothing: the first refusal rolls back the whole batch
    /// and is returned, its detail prefixed with the item's index.
    pub fn create_many(&self, items: &[Map<String, Value>]) -> Result<Vec<Client>, ApiError> {
        const OP: &str = "create";
        let _turn = self.write_turn();
        let mut conn = self.lock();
        let tx = write_transaction(&mut conn, OP)?;
        let now = Utc::now();
        let mut created = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let client = create_in(&tx, &self.company, item, now).map_err(|mut e| {
                e.detail = format!("item {index}: {}", e.detail);
                e
            })?;
            created.push(client);
        }
        tx.commit().map_err(storage(OP))?;
        Ok(created)
    }

    /// Sets or (with `None`) removes a client's `image_url`, which writes through the
    /// API never change: the simulator calls this after it has kept an uploaded image.
    pub fn set_image_url(&self, id: &str, url: Option<&str>) -> Result<Client, ApiError> {
        const OP: &str = "update";
        let _turn = self.write_turn();
        let mut conn = self.lock();
        let tx = write_transaction(&mut conn, OP)?;
        let current = load(&tx, &self.company, id, OP)?.ok_or_else(|| not_found(OP, id))?;
        if current.image_url.as_deref() == url {
            return Ok(current.into_client());
        }
        let updated_at = next_stamp(&current.updated_at, Utc::now());
        tx.prepare_cached(
            "UPDATE client_contacts SET image_url = ?1, updated_at = ?2 WHERE id = ?3",
        )
        .and_then(|mut stmt| stmt.execute(rusqlite::params![url, updated_at, current.id]))
        .map_err(storage(OP))?;
        tx.commit().map_err(storage(OP))?;
        Ok(Row {
            image_url: url.map(str::to_owned),
            updated_at,
            ..current
        }
        .into_client())
    }

    /// The connection; a mutex poisoned by a panicking holder is recovered, because
    /// unwinding dropped (so rolled back) any transaction that the holder had open.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The file's write turn (before the connection), for a write transaction.
    fn write_turn(&self) -> Option<MutexGuard<'_, ()>> {
        self.turn.as_ref().map(Turn::take)
    }
}

impl Backend for EmbeddedBackend {
    fn list(&self, query: &ListQuery) -> Result<Page, ApiError> {
        let mut conn = self.lock();
        list_in(&mut conn, &self.company, query)
    }

    fn get(&self, id: &str) -> Result<Option<Client>, ApiError> {
        let conn = self.lock();
        Ok(load(&conn, &self.company, id, "get")?.map(Row::into_client))
    }

    fn create(&self, attributes: &Map<String, Value>) -> Result<Client, ApiError> {
        const OP: &str = "create";
        let _turn = self.write_turn();
        let mut conn = self.lock();
        let tx = write_transaction(&mut conn, OP)?;
        let client = create_in(&tx, &self.company, attributes, Utc::now())?;
        tx.commit().map_err(storage(OP))?;
        Ok(client)
    }

    fn update(&self, id: &str, attributes: &Map<String, Value>) -> Result<Client, ApiError> {
        const OP: &str = "update";
        refuse_email_change(OP, attributes)?;
        let changes = clean(OP, attributes)?;
        let _turn = self.write_turn();
        let mut conn = self.lock();
        let tx = write_transaction(&mut conn, OP)?;
        let current = load(&tx, &self.company, id, OP)?.ok_or_else(|| not_found(OP, id))?;
        let mut next = current.attributes.clone();
        for (name, change) in changes {
            match change {
                // Insert keeps an existing attribute in its place; a new one goes last.
                Change::Set(value) => {
                    next.insert(name, value);
                }
                // shift_remove, not remove: the other attributes keep their order.
                Change::Clear => {
                    next.shift_remove(&name);
                }
            }
        }
        if next == current.attributes {
            // Nothing changed, so nothing is written and updated_at stays.
            return Ok(current.into_client());
        }
        let derived = Derived::of(&next);
        let updated_at = next_stamp(&current.updated_at, Utc::now());
        let json = Value::Object(next.clone()).to_string();
        tx.prepare_cached(
            "UPDATE client_contacts SET attributes = ?1, first_key = ?2, last_key = ?3,
                search = ?4, updated_at = ?5 WHERE id = ?6",
        )
        .and_then(|mut stmt| {
            stmt.execute(rusqlite::params![
                json,
                derived.first_key,
                derived.last_key,
                derived.search,
                updated_at,
                current.id
            ])
        })
        .map_err(storage(OP))?;
        if current.attributes.get("tags") != next.get("tags") {
            tx.prepare_cached("DELETE FROM client_tags WHERE contact_id = ?1")
                .and_then(|mut stmt| stmt.execute([current.id]))
                .map_err(storage(OP))?;
            insert_tags(&tx, current.id, &self.company, &derived.tags, OP)?;
        }
        tx.commit().map_err(storage(OP))?;
        Ok(Row {
            attributes: next,
            updated_at,
            ..current
        }
        .into_client())
    }

    fn set_image(
        &self,
        id: &str,
        attributes: &Map<String, Value>,
        image: &Image,
    ) -> Result<Client, ApiError> {
        const OP: &str = "set_image";
        refuse_email_change(OP, attributes)?;
        if !attributes.is_empty() {
            self.update(id, attributes)?;
        }
        let url = format!(
            "{}/{}/{}",
            self.image_base,
            id.trim(),
            utf8_percent_encode(image.filename(), PATH_SEGMENT)
        );
        {
            let _turn = self.write_turn();
            let mut conn = self.lock();
            let tx = write_transaction(&mut conn, OP)?;
            let current = load(&tx, &self.company, id, OP)?.ok_or_else(|| not_found(OP, id))?;
            tx.prepare_cached(
                "INSERT INTO client_images (contact_id, filename, media_type, bytes)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (contact_id) DO UPDATE SET filename = excluded.filename,
                    media_type = excluded.media_type, bytes = excluded.bytes",
            )
            .and_then(|mut stmt| {
                stmt.execute(rusqlite::params![
                    current.id,
                    image.filename(),
                    image.media_type(),
                    image.bytes().as_ref()
                ])
            })
            .map_err(storage(OP))?;
            tx.commit().map_err(storage(OP))?;
        }
        self.set_image_url(id, Some(&url))
    }

    fn name(&self) -> &'static str {
        "embedded"
    }
}

/// What a file name may hold unencoded in an image URL's last segment.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One contact as stored: the writable attributes and the computed ones beside them.
#[derive(Debug, Clone)]
struct Row {
    id: i64,
    buyer_id: i64,
    attributes: Map<String, Value>,
    image_url: Option<String>,
    created_at: String,
    updated_at: String,
}

impl Row {
    /// The client as the API returns it: the stored attributes, then the computed ones.
    fn into_client(self) -> Client {
        let mut attributes = self.attributes;
        attributes.insert("buyer_id".into(), Value::String(self.buyer_id.to_string()));
        if let Some(url) = self.image_url {
            attributes.insert("image_url".into(), Value::String(url));
        }
        attributes.insert("created_at".into(), Value::String(self.created_at));
        attributes.insert("updated_at".into(), Value::String(self.updated_at));
        Client {
            id: self.id.to_string(),
            attributes,
        }
    }
}

const ROW_COLUMNS: &str = "id, buyer_id, attributes, image_url, created_at, updated_at";

/// Reads a row selected with [`ROW_COLUMNS`]; the JSON is parsed by [`parse_row`].
fn read_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        id: row.get(0)?,
        buyer_id: row.get(1)?,
        attributes: row.get(2)?,
        image_url: row.get(3)?,
        created_at: row.get(4)?,
        updated_at: row.get(5)?,
    })
}

/// A row before its JSON is parsed: rusqlite's row callback cannot return our errors.
struct RawRow {
    id: i64,
    buyer_id: i64,
    attributes: String,
    image_url: Option<String>,
    created_at: String,
    updated_at: String,
}

fn parse_row(raw: RawRow, op: &'static str) -> Result<Row, ApiError> {
    let attributes = match serde_json::from_str::<Value>(&raw.attributes) {
        Ok(Value::Object(map)) => map,
        Ok(_) | Err(_) => {
            return Err(ApiError::unavailable(
                op,
                format!("the stored attributes of client {} are corrupt", raw.id),
            ));
        }
    };
    Ok(Row {
        id: raw.id,
        buyer_id: raw.buyer_id,
        attributes,
        image_url: raw.image_url,
        created_at: raw.created_at,
        updated_at: raw.updated_at,
    })
}

/// The contact `id` of `company`, or `None` when there is no such id in that company.
fn load(
    conn: &Connection,
    company: &str,
    id: &str,
    op: &'static str,
) -> Result<Option<Row>, ApiError> {
    let Some(id) = parse_id(id) else {
        return Ok(None);
    };
    let sql = format!("SELECT {ROW_COLUMNS} FROM client_contacts WHERE id = ?1 AND company = ?2");
    let raw = conn
        .prepare_cached(&sql)
        .and_then(|mut stmt| {
            stmt.query_row(rusqlite::params![id, company], read_row)
                .optional()
        })
        .map_err(storage(op))?;
    raw.map(|raw| parse_row(raw, op)).transpose()
}

/// An id as this store writes it: a positive integer without sign, space or leading
/// zeros. Anything else names no client (so `"007"` is not client 7).
fn parse_id(id: &str) -> Option<i64> {
    let n = id.parse::<i64>().ok()?;
    (n > 0 && n.to_string() == id).then_some(n)
}

/// A write checked and normalized: set an attribute, or clear it (a null).
#[derive(Debug, Clone, PartialEq)]
enum Change {
    Set(Value),
    Clear,
}

/// Checks the types of a write's attributes and normalizes them; read-only attributes
/// are dropped. The email is normalized, tags NFC-normalized without duplicates, every
/// other attribute kept exactly as sent.
fn clean(
    op: &'static str,
    attributes: &Map<String, Value>,
) -> Result<Vec<(String, Change)>, ApiError> {
    let mut changes = Vec::with_capacity(attributes.len());
    for (name, value) in attributes {
        if READ_ONLY.contains(&name.as_str()) {
            continue;
        }
        if value.is_null() {
            changes.push((name.clone(), Change::Clear));
            continue;
        }
        let value = if name == "tags" {
            Value::Array(clean_tags(op, value)?)
        } else if STRING_ATTRIBUTES.contains(&name.as_str()) {
            let Value::String(s) = value else {
                return Err(ApiError::unprocessable(
                    op,
                    name,
                    format!("{name} must be a string"),
                ));
            };
            if name == "email" {
                Value::String(text::normalize_email(s))
            } else {
                value.clone()
            }
        } else if json_depth(value) > MAX_ATTRIBUTE_DEPTH {
            return Err(ApiError::unprocessable(
                op,
                name,
                format!("{name} nests more than {MAX_ATTRIBUTE_DEPTH} levels deep"),
            ));
        } else {
            value.clone()
        };
        changes.push((name.clone(), Change::Set(value)));
    }
    Ok(changes)
}

/// Tags as stored: each NFC-normalized with white space collapsed, blanks dropped,
/// duplicates dropped, first occurrence's order kept.
fn clean_tags(op: &'static str, value: &Value) -> Result<Vec<Value>, ApiError> {
    let refuse = || ApiError::unprocessable(op, "tags", "tags must be an array of strings");
    let Value::Array(items) = value else {
        return Err(refuse());
    };
    let mut tags: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for item in items {
        let tag = text::normalize_label(item.as_str().ok_or_else(refuse)?);
        if !tag.is_empty() && seen.insert(tag.clone()) {
            tags.push(tag);
        }
        if tags.len() > MAX_TAGS {
            return Err(ApiError::unprocessable(
                op,
                "tags",
                format!("a client may have at most {MAX_TAGS} tags"),
            ));
        }
    }
    Ok(tags.into_iter().map(Value::String).collect())
}

/// The columns derived from a contact's attributes, for indexes and search.
#[derive(Debug)]
struct Derived {
    first_key: String,
    last_key: String,
    search: String,
    tags: Vec<String>,
}

impl Derived {
    fn of(attributes: &Map<String, Value>) -> Derived {
        let key = |name: &str| {
            attributes
                .get(name)
                .and_then(Value::as_str)
                .map(search_key)
                .unwrap_or_default()
        };
        let first_key = key("first_name");
        let last_key = key("last_name");
        let full_name = search_key(&format!("{first_key} {last_key}"));
        let mut fields = vec![first_key.clone(), last_key.clone(), full_name];
        fields.extend(SEARCHED_ATTRIBUTES.iter().map(|name| key(name)));
        let search = fields.join(&SEARCH_SEPARATOR.to_string());
        let tags = match attributes.get("tags") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        Derived {
            first_key,
            last_key,
            search,
            tags,
        }
    }
}

/// Text as it is compared by sort and fulltext: collapsed, NFC, lowercase.
fn search_key(text: &str) -> String {
    text::normalize_label(text).to_lowercase()
}

/// Creates one contact inside `tx` under Spectora's create rules.
fn create_in(
    tx: &Transaction<'_>,
    company: &str,
    attributes: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<Client, ApiError> {
    const OP: &str = "create";
    let mut stored = Map::with_capacity(attributes.len());
    for (name, change) in clean(OP, attributes)? {
        if let Change::Set(value) = change {
            stored.insert(name, value);
        }
    }
    // A blank email is no email: it must not become a buyer shared by every blank form.
    if stored.get("email").and_then(Value::as_str) == Some("") {
        stored.shift_remove("email");
    }
    let given = |name: &str| {
        stored
            .get(name)
            .and_then(Value::as_str)
            .is_some_and(|s| !text::trim(s).is_empty())
    };
    if !(given("email") || given("phone") || given("first_name")) {
        return Err(ApiError::unprocessable(
            OP,
            "email",
            "a client needs at least one of email, phone or first_name",
        ));
    }
    let stamp = format_stamp(now);
    let email = stored
        .get("email")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let existing_buyer = match &email {
        Some(email) => tx
            .prepare_cached("SELECT id FROM client_buyers WHERE email = ?1")
            .and_then(|mut stmt| {
                stmt.query_row([email], |row| row.get::<_, i64>(0))
                    .optional()
            })
            .map_err(storage(OP))?,
        None => None,
    };
    let buyer_id = match existing_buyer {
        Some(buyer_id) => {
            let taken = tx
                .prepare_cached(
                    "SELECT id FROM client_contacts WHERE company = ?1 AND buyer_id = ?2",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(rusqlite::params![company, buyer_id], |row| {
                        row.get::<_, i64>(0)
                    })
                    .optional()
                })
                .map_err(storage(OP))?;
            if let Some(other) = taken {
                return Err(email_taken(other));
            }
            buyer_id
        }
        None => {
            tx.prepare_cached("INSERT INTO client_buyers (email, created_at) VALUES (?1, ?2)")
                .and_then(|mut stmt| stmt.execute(rusqlite::params![email, stamp]))
                .map_err(storage(OP))?;
            tx.last_insert_rowid()
        }
    };
    let derived = Derived::of(&stored);
    let json = Value::Object(stored.clone()).to_string();
    tx.prepare_cached(
        "INSERT INTO client_contacts (company, buyer_id, attributes, first_key, last_key,
            search, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
    )
    .and_then(|mut stmt| {
        stmt.execute(rusqlite::params![
            company,
            buyer_id,
            json,
            derived.first_key,
            derived.last_key,
            derived.search,
            stamp
        ])
    })
    .map_err(|e| match e.sqlite_error_code() {
        // The checks above make this unreachable under our lock; another process
        // writing the same file between them still gets the same answer.
        Some(ErrorCode::ConstraintViolation) => {
            ApiError::unprocessable(OP, "email", "email has already been taken in this company")
        }
        _ => storage(OP)(e),
    })?;
    let id = tx.last_insert_rowid();
    insert_tags(tx, id, company, &derived.tags, OP)?;
    Ok(Row {
        id,
        buyer_id,
        attributes: stored,
        image_url: None,
        created_at: stamp.clone(),
        updated_at: stamp,
    }
    .into_client())
}

fn insert_tags(
    tx: &Transaction<'_>,
    contact_id: i64,
    company: &str,
    tags: &[String],
    op: &'static str,
) -> Result<(), ApiError> {
    if tags.is_empty() {
        return Ok(());
    }
    let mut stmt = tx
        .prepare_cached("INSERT INTO client_tags (contact_id, company, tag) VALUES (?1, ?2, ?3)")
        .map_err(storage(op))?;
    for tag in tags {
        stmt.execute(rusqlite::params![contact_id, company, tag])
            .map_err(storage(op))?;
    }
    Ok(())
}

fn email_taken(other: i64) -> ApiError {
    ApiError::unprocessable(
        "create",
        "email",
        format!("email has already been taken by client {other} of this company"),
    )
}

fn not_found(op: &'static str, id: &str) -> ApiError {
    ApiError::invalid(op, 404, format!("no client with id {id:?} in this company"))
}

/// One page of `company`'s contacts. Count and page are read in one transaction, so
/// `total` and the page agree even while other writers commit.
fn list_in(conn: &mut Connection, company: &str, query: &ListQuery) -> Result<Page, ApiError> {
    const OP: &str = "list";
    let page = query.page.max(1);
    let size = match query.page_size {
        0 => MAX_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    };
    let empty = Page {
        clients: Vec::new(),
        next: None,
        total: Some(0),
    };

    let mut conditions = vec!["company = ?".to_owned()];
    let mut params = vec![SqlValue::Text(company.to_owned())];
    if let Some(id) = &query.id {
        let Some(id) = parse_id(id.trim()) else {
            return Ok(empty);
        };
        conditions.push("id = ?".into());
        params.push(SqlValue::Integer(id));
    }
    if let Some(buyer_id) = &query.buyer_id {
        let Some(buyer_id) = parse_id(buyer_id.trim()) else {
            return Ok(empty);
        };
        conditions.push("buyer_id = ?".into());
        params.push(SqlValue::Integer(buyer_id));
    }
    if let Some(fulltext) = &query.fulltext {
        let needle = search_key(fulltext);
        if !needle.is_empty() {
            // instr, not LIKE: the needle's % and _ are plain characters.
            conditions.push("instr(search, ?) > 0".into());
            params.push(SqlValue::Text(needle));
        }
    }
    let mut tags: Vec<String> = Vec::new();
    for tag in &query.tags {
        let tag = text::normalize_label(tag);
        if !tag.is_empty() && !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    if !tags.is_empty() {
        // Any of the tags matches, through the tag index; the layer above post-filters.
        let marks = vec!["?"; tags.len()].join(", ");
        conditions.push(format!(
            "id IN (SELECT contact_id FROM client_tags WHERE company = ? AND tag IN ({marks}))"
        ));
        params.push(SqlValue::Text(company.to_owned()));
        params.extend(tags.into_iter().map(SqlValue::Text));
    }
    let where_sql = conditions.join(" AND ");

    // A descending sort is the exact reverse of the ascending one (ties by id
    // descending too), so each order is one walk of one index, forwards or backwards.
    let order = match query.sort {
        None => "id".to_owned(),
        Some(sort) => {
            let dir = if sort.descending { "DESC" } else { "ASC" };
            match sort.key {
                SortKey::FirstName => format!("first_key {dir}, id {dir}"),
                SortKey::LastName => format!("last_key {dir}, id {dir}"),
                SortKey::LastFirstName => {
                    format!("last_key {dir}, first_key {dir}, id {dir}")
                }
            }
        }
    };

    let tx = conn.transaction().map_err(storage(OP))?;
    let total: i64 = tx
        .prepare_cached(&format!(
            "SELECT COUNT(*) FROM client_contacts WHERE {where_sql}"
        ))
        .and_then(|mut stmt| {
            stmt.query_row(rusqlite::params_from_iter(params.iter()), |row| row.get(0))
        })
        .map_err(storage(OP))?;
    let total = u64::try_from(total).unwrap_or(0);
    let offset = u64::from(page - 1) * u64::from(size);
    let mut clients = Vec::new();
    if offset < total {
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM client_contacts WHERE {where_sql}
             ORDER BY {order} LIMIT ? OFFSET ?"
        );
        let mut page_params = params.clone();
        page_params.push(SqlValue::Integer(i64::from(size)));
        // offset < total, and total came from an i64.
        page_params.push(SqlValue::Integer(i64::try_from(offset).unwrap_or(i64::MAX)));
        let raws = tx
            .prepare_cached(&sql)
            .and_then(|mut stmt| {
                stmt.query_map(rusqlite::params_from_iter(page_params.iter()), read_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(storage(OP))?;
        clients.reserve(raws.len());
        for raw in raws {
            clients.push(parse_row(raw, OP)?.into_client());
        }
    }
    tx.commit().map_err(storage(OP))?;
    let seen = offset + clients.len() as u64;
    let next = if !clients.is_empty() && seen < total {
        page.checked_add(1)
    } else {
        None
    };
    Ok(Page {
        clients,
        next,
        total: Some(total),
    })
}

/// A write transaction that takes the write lock at once (`BEGIN IMMEDIATE`): the
/// checks a create makes then hold until it commits, even against other processes.
fn write_transaction<'c>(
    conn: &'c mut Connection,
    op: &'static str,
) -> Result<Transaction<'c>, ApiError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(storage(op))
}

/// Maps a storage failure to the 503 that a server would answer: worth retrying.
fn storage(op: &'static str) -> impl Fn(rusqlite::Error) -> ApiError {
    move |e| ApiError::unavailable(op, format!("client storage failed: {e}"))
}

fn format_stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The `updated_at` of a change: now, but always later than the previous one, so two
/// changes within one millisecond still read as two changes.
fn next_stamp(previous: &str, now: DateTime<Utc>) -> String {
    let floor = DateTime::parse_from_rfc3339(previous)
        .ok()
        .map(|t| t.with_timezone(&Utc) + chrono::Duration::milliseconds(1));
    match floor {
        Some(floor) if floor > now => format_stamp(floor),
        _ => format_stamp(now),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::clients::Sort;
    use serde_json::json;

    fn attrs(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn backend() -> EmbeddedBackend {
        EmbeddedStore::in_memory().unwrap().company("default")
    }

    fn query() -> ListQuery {
        ListQuery::first_page()
    }

    fn ids(page: &Page) -> Vec<String> {
        page.clients.iter().map(|c| c.id.clone()).collect()
    }

    fn names(page: &Page) -> Vec<String> {
        page.clients
            .iter()
            .map(|c| {
                format!(
                    "{} {}",
                    c.str_attr("first_name").unwrap_or(""),
                    c.str_attr("last_name").unwrap_or("")
                )
            })
            .collect()
    }

    fn assert_422(err: &ApiError, attribute: &str) {
        assert_eq!(err.status, Some(422), "{err}");
        assert_eq!(
            err.pointer.as_deref(),
            Some(format!("/data/attributes/{attribute}").as_str()),
            "{err}"
        );
        assert!(!err.transient);
        assert!(!err.detail.is_empty());
    }

    fn seed(backend: &EmbeddedBackend, n: usize) -> Vec<Client> {
        let items: Vec<_> = (0..n)
            .map(|i| {
                attrs(json!({ "first_name": format!("F{i:05}"), "email": format!("c{i}@x.io") }))
            })
            .collect();
        backend.create_many(&items).unwrap()
    }

    // ---- opening -------------------------------------------------------------------

    #[test]
    fn open_creates_prefixed_tables_beside_others_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("CREATE TABLE events (id TEXT); INSERT INTO events VALUES ('e1');")
                .unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        let created = store
            .company("default")
            .create(&attrs(json!({ "first_name": "Jane" })))
            .unwrap();
        drop(store);

        let store = EmbeddedStore::open(&path).unwrap();
        let got = store.company("default").get(&created.id).unwrap();
        assert_eq!(got, Some(created));

        let conn = Connection::open(&path).unwrap();
        let events: i64 = conn
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(events, 1);
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap();
        let tables: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for table in &tables {
            assert!(
                table == "events" || table.starts_with("client_"),
                "unexpected table {table}"
            );
        }
        assert!(tables.contains(&"client_contacts".to_owned()));
    }

    #[test]
    fn open_sets_wal_full_sync_and_busy_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("c.db")).unwrap();
        let conn = store.conn.lock().unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "FULL");
        let busy: i64 = conn
            .query_row("PRAGMA busy_timeout", [], |r| r.get(0))
            .unwrap();
        assert!(busy >= 1000);
    }

    #[test]
    fn open_failure_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        // A directory cannot be opened as a database.
        let err = EmbeddedStore::open(dir.path()).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("client database"), "{shown}");
        let missing = dir.path().join("no/such/dir/c.db");
        assert!(EmbeddedStore::open(&missing).is_err());
    }

    #[test]
    fn backend_is_clone_send_sync_and_named_embedded() {
        fn check<T: Clone + Send + Sync + 'static>() {}
        check::<EmbeddedBackend>();
        check::<EmbeddedStore>();
        let b = backend();
        assert_eq!(b.name(), "embedded");
        assert_eq!(b.company(), "default");
        let boxed: Box<dyn Backend> = Box::new(b.clone());
        assert_eq!(boxed.name(), "embedded");
        assert!(format!("{b:?}").contains("default"));
    }

    #[test]
    fn a_poisoned_mutex_is_recovered() {
        let b = backend();
        let other = b.clone();
        let _ = std::thread::spawn(move || {
            let _guard = other.conn.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        assert!(b.conn.is_poisoned());
        let c = b.create(&attrs(json!({ "phone": "555" }))).unwrap();
        assert_eq!(b.get(&c.id).unwrap(), Some(c));
    }

    // ---- create --------------------------------------------------------------------

    #[test]
    fn create_with_only_a_phone() {
        let b = backend();
        let c = b
            .create(&attrs(json!({ "phone": "(303) 555-0100" })))
            .unwrap();
        assert_eq!(c.str_attr("phone"), Some("(303) 555-0100"));
        assert!(c.str_attr("email").is_none());
        assert!(c.str_attr("buyer_id").is_some());
        assert_eq!(b.get(&c.id).unwrap(), Some(c));
    }

    #[test]
    fn create_with_only_a_first_name_or_only_an_email() {
        let b = backend();
        assert!(b.create(&attrs(json!({ "first_name": "Jane" }))).is_ok());
        assert!(b.create(&attrs(json!({ "email": "j@x.io" }))).is_ok());
    }

    #[test]
    fn an_empty_create_is_refused() {
        let b = backend();
        for body in [
            json!({}),
            json!({ "last_name": "Smith", "notes": "hi" }),
            json!({ "email": "  ", "phone": "", "first_name": " \t" }),
            json!({ "email": null, "phone": null }),
            json!({ "id": "5", "buyer_id": "1", "created_at": "2020-01-01T00:00:00Z" }),
        ] {
            let err = b.create(&attrs(body.clone())).unwrap_err();
            assert_422(&err, "email");
            assert_eq!(err.operation, "create");
            assert!(err.detail.contains("first_name"), "{body}: {err}");
        }
        assert_eq!(b.list(&query()).unwrap().total, Some(0));
    }

    #[test]
    fn emails_are_stored_normalized() {
        let b = backend();
        let c = b
            .create(&attrs(json!({ "email": "  Jane@Example.COM " })))
            .unwrap();
        assert_eq!(c.str_attr("email"), Some("jane@example.com"));
        let got = b.get(&c.id).unwrap().unwrap();
        assert_eq!(got.str_attr("email"), Some("jane@example.com"));
    }

    #[test]
    fn same_email_in_two_companies_shares_the_buyer() {
        let store = EmbeddedStore::in_memory().unwrap();
        let a = store.company("acme");
        let z = store.company("zenith");
        let ca = a
            .create(&attrs(json!({ "email": "jane@example.com" })))
            .unwrap();
        let cz = z
            .create(&attrs(json!({ "email": " JANE@example.com" })))
            .unwrap();
        assert_eq!(ca.str_attr("buyer_id"), cz.str_attr("buyer_id"));
        assert_ne!(ca.id, cz.id);
        // Each company sees its own contact only.
        assert_eq!(a.get(&cz.id).unwrap(), None);
        assert_eq!(z.get(&ca.id).unwrap(), None);
        assert_eq!(ids(&a.list(&query()).unwrap()), vec![ca.id.clone()]);
        assert_eq!(ids(&z.list(&query()).unwrap()), vec![cz.id.clone()]);
        // Different emails, different buyers.
        let other = a
            .create(&attrs(json!({ "email": "john@example.com" })))
            .unwrap();
        assert_ne!(other.str_attr("buyer_id"), ca.str_attr("buyer_id"));
    }

    #[test]
    fn a_second_contact_for_the_same_email_in_a_company_is_refused() {
        let b = backend();
        let first = b
            .create(&attrs(json!({ "email": "jane@example.com" })))
            .unwrap();
        let err = b
            .create(&attrs(
                json!({ "email": "Jane@Example.com", "first_name": "J" }),
            ))
            .unwrap_err();
        assert_422(&err, "email");
        assert!(err.detail.contains("already been taken"), "{err}");
        assert!(err.detail.contains(&first.id), "{err}");
        assert_eq!(b.list(&query()).unwrap().total, Some(1));
    }

    #[test]
    fn contacts_without_email_each_get_a_new_buyer() {
        let b = backend();
        let one = b.create(&attrs(json!({ "phone": "1" }))).unwrap();
        let two = b.create(&attrs(json!({ "phone": "1" }))).unwrap();
        let blank = b
            .create(&attrs(json!({ "phone": "1", "email": " " })))
            .unwrap();
        assert_ne!(one.str_attr("buyer_id"), two.str_attr("buyer_id"));
        assert_ne!(two.str_attr("buyer_id"), blank.str_attr("buyer_id"));
        assert!(blank.attributes.get("email").is_none());
    }

    #[test]
    fn wrong_types_are_refused_naming_the_attribute() {
        let b = backend();
        for (body, attribute) in [
            (json!({ "first_name": 5 }), "first_name"),
            (json!({ "phone": "1", "last_name": ["x"] }), "last_name"),
            (json!({ "email": true }), "email"),
            (json!({ "phone": { "n": 1 } }), "phone"),
            (json!({ "phone": "1", "mobile_phone": 1 }), "mobile_phone"),
            (json!({ "phone": "1", "home_phone": 1.5 }), "home_phone"),
            (json!({ "phone": "1", "notes": 1 }), "notes"),
            (
                json!({ "phone": "1", "private_notes": false }),
                "private_notes",
            ),
            (json!({ "phone": "1", "tags": "vip" }), "tags"),
            (json!({ "phone": "1", "tags": ["vip", 3] }), "tags"),
            (json!({ "phone": "1", "tags": { "a": "b" } }), "tags"),
        ] {
            let err = b.create(&attrs(body.clone())).unwrap_err();
            assert_422(&err, attribute);
            assert!(err.detail.contains(attribute), "{body}: {err}");
        }
        let c = b.create(&attrs(json!({ "phone": "1" }))).unwrap();
        let err = b.update(&c.id, &attrs(json!({ "tags": [1] }))).unwrap_err();
        assert_422(&err, "tags");
        assert_eq!(err.operation, "update");
        let err = b
            .update(&c.id, &attrs(json!({ "first_name": 1 })))
            .unwrap_err();
        assert_422(&err, "first_name");
    }

    #[test]
    fn tags_are_nfc_deduplicated_in_order() {
        let b = backend();
        let c = b
            .create(&attrs(json!({
                "first_name": "Ren",
                "tags": ["vip", "Rene\u{301}e  fan", "lead", "vip", "Ren\u{e9}e fan", " ", "lead "]
            })))
            .unwrap();
        assert_eq!(c.tags(), vec!["vip", "Ren\u{e9}e fan", "lead"]);
        assert_eq!(b.get(&c.id).unwrap().unwrap().tags(), c.tags());
    }

    #[test]
    fn read_only_attributes_are_ignored_on_write() {
        let b = backend();
        let c = b
            .create(&attrs(json!({
                "first_name": "Jane",
                "id": "999",
                "buyer_id": "999",
                "image_url": "http://evil/x.png",
                "created_at": "2000-01-01T00:00:00Z",
                "updated_at": "2000-01-01T00:00:00Z",
            })))
            .unwrap();
        assert_ne!(c.id, "999");
        assert_ne!(c.str_attr("buyer_id"), Some("999"));
        assert!(c.attributes.get("image_url").is_none());
        assert_ne!(c.str_attr("created_at"), Some("2000-01-01T00:00:00Z"));
        assert!(c.attributes.get("id").is_none());

        let u = b
            .update(
                &c.id,
                &attrs(json!({ "buyer_id": "7", "updated_at": "x", "id": "1" })),
            )
            .unwrap();
        assert_eq!(
            u, c,
            "a write of read-only attributes alone changes nothing"
        );
    }

    #[test]
    fn unknown_attributes_are_kept_as_sent() {
        let b = backend();
        let extra = json!({ "source": "web", "score": [1, 2, { "deep": null }] });
        let c = b
            .create(&attrs(json!({
                "first_name": "Jane",
                "referral_source": "Google",
                "custom": extra,
                "count": 3,
            })))
            .unwrap();
        let got = b.get(&c.id).unwrap().unwrap();
        assert_eq!(
            got.attributes.get("referral_source"),
            Some(&json!("Google"))
        );
        assert_eq!(got.attributes.get("custom"), Some(&extra));
        assert_eq!(got.attributes.get("count"), Some(&json!(3)));
    }

    #[test]
    fn computed_attributes_are_strings() {
        let b = backend();
        let c = b.create(&attrs(json!({ "first_name": "Jane" }))).unwrap();
        let buyer = c.str_attr("buyer_id").unwrap();
        assert!(buyer.parse::<u64>().is_ok());
        for name in ["created_at", "updated_at"] {
            let stamp = c.str_attr(name).unwrap();
            let parsed = DateTime::parse_from_rfc3339(stamp).unwrap();
            assert_eq!(parsed.offset().local_minus_utc(), 0);
            assert!(stamp.ends_with('Z'), "{stamp}");
        }
        assert_eq!(c.str_attr("created_at"), c.str_attr("updated_at"));
        assert!(c.id.parse::<u64>().is_ok());
    }

    #[test]
    fn ids_increase_and_are_global() {
        let store = EmbeddedStore::in_memory().unwrap();
        let a = store.company("a");
        let z = store.company("z");
        let mut last = 0u64;
        for i in 0..6 {
            let b = if i % 2 == 0 { &a } else { &z };
            let c = b
                .create(&attrs(json!({ "phone": format!("{i}") })))
                .unwrap();
            let id: u64 = c.id.parse().unwrap();
            assert!(id > last);
            last = id;
        }
    }

    #[test]
    fn create_many_applies_the_rules_all_or_nothing() {
        let b = backend();
        let made = b
            .create_many(&[
                attrs(json!({ "email": "A@x.io", "tags": ["t", "t"] })),
                attrs(json!({ "phone": "1" })),
            ])
            .unwrap();
        assert_eq!(made.len(), 2);
        assert_eq!(made[0].str_attr("email"), Some("a@x.io"));
        assert_eq!(made[0].tags(), vec!["t"]);
        assert_eq!(b.get(&made[1].id).unwrap().as_ref(), Some(&made[1]));

        // A duplicate inside the batch refuses the whole batch.
        let err = b
            .create_many(&[
                attrs(json!({ "email": "new@x.io" })),
                attrs(json!({ "email": "NEW@x.io" })),
            ])
            .unwrap_err();
        assert_422(&err, "email");
        assert!(err.detail.starts_with("item 1:"), "{err}");
        let err = b
            .create_many(&[attrs(json!({ "email": "other@x.io" })), attrs(json!({}))])
            .unwrap_err();
        assert_422(&err, "email");
        assert_eq!(b.list(&query()).unwrap().total, Some(2));
        let mut q = query();
        q.fulltext = Some("new@x.io".into());
        assert_eq!(b.list(&q).unwrap().total, Some(0));
        assert!(b.create_many(&[]).unwrap().is_empty());
    }

    #[test]
    fn create_many_seeds_ten_thousand_quickly() {
        let b = backend();
        let start = std::time::Instant::now();
        let made = seed(&b, 10_000);
        assert_eq!(made.len(), 10_000);
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(b.list(&query()).unwrap().total, Some(10_000));
    }

    // ---- get -----------------------------------------------------------------------

    #[test]
    fn get_of_unknown_or_malformed_ids_is_none() {
        let b = backend();
        let c = b.create(&attrs(json!({ "phone": "1" }))).unwrap();
        for id in [
            "",
            "0",
            "-1",
            "999",
            "abc",
            " 1",
            "01",
            "1.0",
            "99999999999999999999",
        ] {
            assert_eq!(b.get(id).unwrap(), None, "{id:?}");
        }
        assert_eq!(b.get(&format!("0{}", c.id)).unwrap(), None);
        assert!(b.get(&c.id).unwrap().is_some());
    }

    // ---- update --------------------------------------------------------------------

    #[test]
    fn update_changes_only_the_given_attributes() {
        let b = backend();
        let c = b
            .create(&attrs(json!({
                "first_name": "Jane", "last_name": "Smith", "email": "j@x.io", "tags": ["a"]
            })))
            .unwrap();
        let u = b
            .update(&c.id, &attrs(json!({ "last_name": "Doe", "phone": "555" })))
            .unwrap();
        assert_eq!(u.id, c.id);
        assert_eq!(u.str_attr("first_name"), Some("Jane"));
        assert_eq!(u.str_attr("last_name"), Some("Doe"));
        assert_eq!(u.str_attr("phone"), Some("555"));
        assert_eq!(u.str_attr("email"), Some("j@x.io"));
        assert_eq!(u.tags(), vec!["a"]);
        assert_eq!(u.str_attr("buyer_id"), c.str_attr("buyer_id"));
        assert_eq!(u.str_attr("created_at"), c.str_attr("created_at"));
        assert!(u.str_attr("updated_at") > c.str_attr("updated_at"));
        assert_eq!(b.get(&c.id).unwrap(), Some(u));
    }

    #[test]
    fn update_refuses_email_even_unchanged() {
        let b = backend();
        let c = b.create(&attrs(json!({ "email": "j@x.io" }))).unwrap();
        for body in [
            json!({ "email": "new@x.io" }),
            json!({ "email": "j@x.io" }),
            json!({ "email": null }),
            json!({ "first_name": "Jane", "email": "j@x.io" }),
        ] {
            let err = b.update(&c.id, &attrs(body)).unwrap_err();
            assert_422(&err, "email");
            assert!(err.detail.contains("cannot be changed"), "{err}");
        }
        // Nothing was applied, not even the first_name sent beside the email.
        assert_eq!(b.get(&c.id).unwrap(), Some(c));
    }

    #[test]
    fn update_of_an_unknown_id_is_404() {
        let store = EmbeddedStore::in_memory().unwrap();
        let a = store.company("a");
        let z = store.company("z");
        let c = z.create(&attrs(json!({ "phone": "1" }))).unwrap();
        for id in ["999", "x", "", c.id.as_str()] {
            let err = a
                .update(id, &attrs(json!({ "first_name": "J" })))
                .unwrap_err();
            assert_eq!(err.status, Some(404), "{id:?}");
            assert_eq!(err.operation, "update");
            assert!(!err.transient);
        }
        assert_eq!(z.get(&c.id).unwrap(), Some(c));
    }

    #[test]
    fn unknown_attributes_survive_an_update() {
        let b = backend();
        let c = b
            .create(&attrs(json!({
                "first_name": "Jane", "referral_source": "Google", "meta": { "a": [1, 2] }
            })))
            .unwrap();
        let u = b
            .update(&c.id, &attrs(json!({ "first_name": "Janet" })))
            .unwrap();
        assert_eq!(u.attributes.get("referral_source"), Some(&json!("Google")));
        assert_eq!(u.attributes.get("meta"), Some(&json!({ "a": [1, 2] })));
        let u = b
            .update(
                &c.id,
                &attrs(json!({ "referral_source": { "kind": "friend" } })),
            )
            .unwrap();
        assert_eq!(
            u.attributes.get("referral_source"),
            Some(&json!({ "kind": "friend" }))
        );
        assert_eq!(u.str_attr("first_name"), Some("Janet"));
        // Attribute order is kept across updates.
        let keys: Vec<_> = u.attributes.keys().cloned().collect();
        assert_eq!(&keys[..3], ["first_name", "referral_source", "meta"]);
    }

    #[test]
    fn null_clears_an_attribute() {
        let b = backend();
        let c = b
            .create(&attrs(json!({
                "first_name": "Jane", "last_name": "Smith", "tags": ["a"], "extra": 1
            })))
            .unwrap();
        let u = b
            .update(
                &c.id,
                &attrs(json!({ "last_name": null, "tags": null, "extra": null })),
            )
            .unwrap();
        assert!(!u.attributes.contains_key("last_name"));
        assert!(!u.attributes.contains_key("tags"));
        assert!(!u.attributes.contains_key("extra"));
        assert_eq!(b.get(&c.id).unwrap(), Some(u));
        let mut q = query();
        q.tags = vec!["a".into()];
        assert_eq!(b.list(&q).unwrap().total, Some(0));
        q.tags.clear();
        q.fulltext = Some("smith".into());
        assert_eq!(b.list(&q).unwrap().total, Some(0));
    }

    #[test]
    fn updated_at_changes_only_when_something_changed() {
        let b = backend();
        let c = b
            .create(&attrs(json!({ "first_name": "Jane", "tags": ["a", "b"] })))
            .unwrap();
        for body in [
            json!({}),
            json!({ "first_name": "Jane" }),
            json!({ "tags": ["a", "b", "a"] }),
            json!({ "last_name": null }),
            json!({ "updated_at": "2030-01-01T00:00:00Z" }),
        ] {
            let u = b.update(&c.id, &attrs(body.clone())).unwrap();
            assert_eq!(u, c, "{body}");
        }
        let u1 = b
            .update(&c.id, &attrs(json!({ "tags": ["b", "a"] })))
            .unwrap();
        let u2 = b
            .update(&c.id, &attrs(json!({ "first_name": "J" })))
            .unwrap();
        assert!(u1.str_attr("updated_at") > c.str_attr("updated_at"));
        assert!(u2.str_attr("updated_at") > u1.str_attr("updated_at"));
    }

    #[test]
    fn updating_tags_replaces_the_list_and_the_index() {
        let b = backend();
        let c = b
            .create(&attrs(json!({ "phone": "1", "tags": ["old"] })))
            .unwrap();
        let u = b
            .update(
                &c.id,
                &attrs(json!({ "tags": ["new", "Caf\u{65}\u{301}", "new"] })),
            )
            .unwrap();
        assert_eq!(u.tags(), vec!["new", "Caf\u{e9}"]);
        let mut q = query();
        q.tags = vec!["old".into()];
        assert!(b.list(&q).unwrap().clients.is_empty());
        q.tags = vec!["Caf\u{e9}".into()];
        assert_eq!(ids(&b.list(&q).unwrap()), vec![c.id.clone()]);
    }

    #[test]
    fn set_image_url_sets_and_clears() {
        let b = backend();
        let c = b.create(&attrs(json!({ "phone": "1" }))).unwrap();
        let u = b.set_image_url(&c.id, Some("http://img/1.png")).unwrap();
        assert_eq!(u.str_attr("image_url"), Some("http://img/1.png"));
        assert!(u.str_attr("updated_at") > c.str_attr("updated_at"));
        assert_eq!(b.get(&c.id).unwrap().as_ref(), Some(&u));
        let same = b.set_image_url(&c.id, Some("http://img/1.png")).unwrap();
        assert_eq!(same, u);
        let cleared = b.set_image_url(&c.id, None).unwrap();
        assert!(!cleared.attributes.contains_key("image_url"));
        assert_eq!(b.set_image_url("999", None).unwrap_err().status, Some(404));
    }

    // ---- list: filters -------------------------------------------------------------

    fn people(b: &EmbeddedBackend) -> Vec<Client> {
        b.create_many(&[
            attrs(json!({
                "first_name": "Jane", "last_name": "Smith", "email": "jane@example.com",
                "phone": "303-555-0100", "tags": ["vip", "lead"]
            })),
            attrs(json!({
                "first_name": "john", "last_name": "Doe", "email": "jd@corp.io",
                "mobile_phone": "+1 720 555 0199", "tags": ["lead"]
            })),
            attrs(json!({
                "first_name": "Ann", "last_name": "smith", "home_phone": "999-1234",
                "tags": ["repeat"]
            })),
            attrs(json!({ "first_name": "Zoë", "last_name": "Adams", "email": "zoe@x.io" })),
        ])
        .unwrap()
    }

    #[test]
    fn filter_by_id_and_buyer_id() {
        let b = backend();
        let all = people(&b);
        let mut q = query();
        q.id = Some(all[1].id.clone());
        let page = b.list(&q).unwrap();
        assert_eq!(ids(&page), vec![all[1].id.clone()]);
        assert_eq!(page.total, Some(1));
        q.id = Some("999".into());
        assert_eq!(b.list(&q).unwrap().total, Some(0));
        q.id = Some("nope".into());
        assert_eq!(b.list(&q).unwrap().total, Some(0));

        let mut q = query();
        q.buyer_id = all[2].str_attr("buyer_id").map(str::to_owned);
        assert_eq!(ids(&b.list(&q).unwrap()), vec![all[2].id.clone()]);
        q.id = Some(all[1].id.clone());
        assert!(
            b.list(&q).unwrap().clients.is_empty(),
            "filters combine with AND"
        );
        let mut q = query();
        q.buyer_id = Some("x".into());
        assert!(b.list(&q).unwrap().clients.is_empty());
    }

    #[test]
    fn filter_by_tags_matches_any() {
        let b = backend();
        let all = people(&b);
        let mut q = query();
        q.tags = vec!["vip".into()];
        assert_eq!(ids(&b.list(&q).unwrap()), vec![all[0].id.clone()]);
        q.tags = vec!["lead".into()];
        assert_eq!(
            ids(&b.list(&q).unwrap()),
            vec![all[0].id.clone(), all[1].id.clone()]
        );
        q.tags = vec!["vip".into(), "repeat".into(), "vip".into()];
        let page = b.list(&q).unwrap();
        assert_eq!(ids(&page), vec![all[0].id.clone(), all[2].id.clone()]);
        assert_eq!(page.total, Some(2));
        q.tags = vec!["none".into()];
        assert_eq!(b.list(&q).unwrap().total, Some(0));
        q.tags = vec![" lead ".into()];
        assert_eq!(
            b.list(&q).unwrap().total,
            Some(2),
            "query tags are normalized"
        );
        q.tags = vec!["".into()];
        assert_eq!(
            b.list(&q).unwrap().total,
            Some(4),
            "blank tags are no filter"
        );
    }

    #[test]
    fn tags_filter_is_per_company() {
        let store = EmbeddedStore::in_memory().unwrap();
        let a = store.company("a");
        let z = store.company("z");
        a.create(&attrs(json!({ "phone": "1", "tags": ["vip"] })))
            .unwrap();
        let mut q = query();
        q.tags = vec!["vip".into()];
        assert_eq!(z.list(&q).unwrap().total, Some(0));
        assert_eq!(a.list(&q).unwrap().total, Some(1));
    }

    #[test]
    fn fulltext_on_email_name_and_phones() {
        let b = backend();
        let all = people(&b);
        let find = |text: &str| {
            let mut q = query();
            q.fulltext = Some(text.into());
            ids(&b.list(&q).unwrap())
        };
        assert_eq!(find("jane@example.com"), vec![all[0].id.clone()]);
        assert_eq!(find("EXAMPLE.COM"), vec![all[0].id.clone()]);
        assert_eq!(find("Jane Smith"), vec![all[0].id.clone()]);
        assert_eq!(find("  jane   smith "), vec![all[0].id.clone()]);
        assert_eq!(find("smith"), vec![all[0].id.clone(), all[2].id.clone()]);
        assert_eq!(find("JOHN"), vec![all[1].id.clone()]);
        assert_eq!(find("doe"), vec![all[1].id.clone()]);
        assert_eq!(find("555-0100"), vec![all[0].id.clone()]);
        assert_eq!(find("720 555"), vec![all[1].id.clone()]);
        assert_eq!(find("999-12"), vec![all[2].id.clone()]);
        assert_eq!(find("ZOË"), vec![all[3].id.clone()]);
        assert_eq!(
            find("Zoe\u{308}"),
            vec![all[3].id.clone()],
            "NFC on both sides"
        );
        assert_eq!(find("nobody"), Vec::<String>::new());
        // No match across two fields, and % or _ are plain characters.
        assert_eq!(find("smith jane"), Vec::<String>::new());
        assert_eq!(find("%"), Vec::<String>::new());
        assert_eq!(find("j_ne"), Vec::<String>::new());
        assert_eq!(find("   ").len(), 4, "blank fulltext is no filter");
        assert_eq!(find("").len(), 4);
    }

    #[test]
    fn fulltext_ignores_notes_and_unknown_attributes() {
        let b = backend();
        b.create(&attrs(
            json!({ "phone": "1", "notes": "secret", "custom": "secret" }),
        ))
        .unwrap();
        let mut q = query();
        q.fulltext = Some("secret".into());
        assert_eq!(b.list(&q).unwrap().total, Some(0));
    }

    #[test]
    fn filters_combine() {
        let b = backend();
        let all = people(&b);
        let mut q = query();
        q.fulltext = Some("smith".into());
        q.tags = vec!["lead".into()];
        assert_eq!(ids(&b.list(&q).unwrap()), vec![all[0].id.clone()]);
    }

    // ---- list: sort ----------------------------------------------------------------

    fn sorted(b: &EmbeddedBackend, sort: &str) -> Vec<String> {
        let mut q = query();
        q.sort = Sort::parse(sort);
        assert!(q.sort.is_some());
        names(&b.list(&q).unwrap())
    }

    fn sort_people(b: &EmbeddedBackend) {
        b.create_many(&[
            attrs(json!({ "first_name": "bob", "last_name": "Young" })),
            attrs(json!({ "first_name": "Alice", "last_name": "young" })),
            attrs(json!({ "first_name": "Carl", "last_name": "Adams" })),
            attrs(json!({ "first_name": "alice", "last_name": "Brown" })),
        ])
        .unwrap();
    }

    #[test]
    fn sort_by_first_name_both_directions() {
        let b = backend();
        sort_people(&b);
        // Case-insensitive; the two alices tie and keep id order.
        let asc = sorted(&b, "first_name");
        assert_eq!(
            asc,
            ["Alice young", "alice Brown", "bob Young", "Carl Adams"]
        );
        let desc = sorted(&b, "-first_name");
        assert_eq!(
            desc,
            ["Carl Adams", "bob Young", "alice Brown", "Alice young"]
        );
    }

    #[test]
    fn sort_by_last_name_both_directions() {
        let b = backend();
        sort_people(&b);
        let asc = sorted(&b, "last_name");
        assert_eq!(
            asc,
            ["Carl Adams", "alice Brown", "bob Young", "Alice young"]
        );
        let desc = sorted(&b, "-last_name");
        assert_eq!(
            desc,
            ["Alice young", "bob Young", "alice Brown", "Carl Adams"]
        );
    }

    #[test]
    fn sort_by_last_first_name_both_directions() {
        let b = backend();
        sort_people(&b);
        let asc = sorted(&b, "last_first_name");
        assert_eq!(
            asc,
            ["Carl Adams", "alice Brown", "Alice young", "bob Young"]
        );
        let desc = sorted(&b, "-last_first_name");
        assert_eq!(
            desc,
            ["bob Young", "Alice young", "alice Brown", "Carl Adams"]
        );
    }

    #[test]
    fn no_sort_is_numeric_id_order() {
        let b = backend();
        let made = seed(&b, 12);
        let page = b.list(&query()).unwrap();
        assert_eq!(
            ids(&page),
            made.iter().map(|c| c.id.clone()).collect::<Vec<_>>()
        );
        let numbers: Vec<u64> = ids(&page).iter().map(|id| id.parse().unwrap()).collect();
        assert!(numbers.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn missing_names_sort_first_ascending() {
        let b = backend();
        b.create(&attrs(json!({ "first_name": "Bea" }))).unwrap();
        b.create(&attrs(json!({ "phone": "1" }))).unwrap();
        assert_eq!(sorted(&b, "first_name"), [" ", "Bea "]);
        assert_eq!(sorted(&b, "-first_name"), ["Bea ", " "]);
    }

    #[test]
    fn sorted_pages_do_not_overlap() {
        let b = backend();
        let items: Vec<_> = (0..25)
            .map(|i| attrs(json!({ "first_name": format!("N{}", i % 3), "phone": "1" })))
            .collect();
        b.create_many(&items).unwrap();
        for sort in ["first_name", "-first_name", "last_first_name", "-last_name"] {
            let mut seen = Vec::new();
            let mut q = query();
            q.sort = Sort::parse(sort);
            q.page_size = 7;
            loop {
                let page = b.list(&q).unwrap();
                seen.extend(ids(&page));
                match page.next {
                    Some(next) => q.page = next,
                    None => break,
                }
            }
            let mut unique = seen.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), 25, "{sort}");
            assert_eq!(seen.len(), 25, "{sort}");
        }
    }

    // ---- list: pages ---------------------------------------------------------------

    /// Walks every page of 200 and checks the counts, `next` and `total`.
    fn walk(b: &EmbeddedBackend, n: usize) {
        let expected_pages = n.div_ceil(200).max(1);
        let mut q = query();
        let mut all = Vec::new();
        let mut pages = 0;
        loop {
            let page = b.list(&q).unwrap();
            pages += 1;
            assert_eq!(page.total, Some(n as u64), "n={n}");
            let want = if pages < expected_pages {
                200
            } else {
                n - 200 * (pages - 1)
            };
            assert_eq!(page.clients.len(), want, "n={n} page={pages}");
            all.extend(ids(&page));
            match page.next {
                Some(next) => {
                    assert_eq!(next, q.page + 1);
                    q.page = next;
                }
                None => break,
            }
        }
        assert_eq!(pages, expected_pages, "n={n}");
        assert_eq!(all.len(), n);
        // A page past the end is empty, says the total and has no next.
        q.page += 1;
        let past = b.list(&q).unwrap();
        assert!(past.clients.is_empty());
        assert_eq!(past.next, None);
        assert_eq!(past.total, Some(n as u64));
    }

    #[test]
    fn pagination_edges() {
        for n in [0, 1, 200, 201, 401] {
            let b = backend();
            if n > 0 {
                seed(&b, n);
            }
            walk(&b, n);
        }
    }

    #[test]
    fn page_zero_is_page_one_and_sizes_are_clamped() {
        let b = backend();
        seed(&b, 450);
        let mut q = query();
        q.page = 0;
        q.page_size = 0;
        let page = b.list(&q).unwrap();
        assert_eq!(page.clients.len(), 200);
        assert_eq!(page.next, Some(2));
        q.page = 1;
        assert_eq!(b.list(&q).unwrap(), page);

        q.page_size = 1000;
        assert_eq!(b.list(&q).unwrap().clients.len(), 200);
        q.page_size = 1;
        q.page = 450;
        let last = b.list(&q).unwrap();
        assert_eq!(last.clients.len(), 1);
        assert_eq!(last.next, None);
        q.page = 449;
        assert_eq!(b.list(&q).unwrap().next, Some(450));
        q.page_size = 7;
        q.page = 3;
        let third = b.list(&q).unwrap();
        let first_ids: Vec<_> = b.list(&query()).unwrap().clients[14..21]
            .iter()
            .map(|c| c.id.clone())
            .collect();
        assert_eq!(ids(&third), first_ids);
    }

    #[test]
    fn page_far_past_the_end_is_empty() {
        let b = backend();
        seed(&b, 3);
        let mut q = query();
        q.page = u32::MAX;
        let page = b.list(&q).unwrap();
        assert!(page.clients.is_empty());
        assert_eq!(page.next, None);
        assert_eq!(page.total, Some(3));
        q.page_size = 2;
        q.page = 2;
        let page = b.list(&q).unwrap();
        assert_eq!(page.clients.len(), 1);
        assert_eq!(page.next, None);
    }

    #[test]
    fn filtered_pages_count_only_matches() {
        let b = backend();
        let items: Vec<_> = (0..500)
            .map(|i| {
                let tags = if i % 2 == 0 {
                    json!(["even"])
                } else {
                    json!(["odd"])
                };
                attrs(json!({ "first_name": format!("P{i}"), "tags": tags }))
            })
            .collect();
        b.create_many(&items).unwrap();
        let mut q = query();
        q.tags = vec!["even".into()];
        let page = b.list(&q).unwrap();
        assert_eq!(page.total, Some(250));
        assert_eq!(page.clients.len(), 200);
        assert_eq!(page.next, Some(2));
        assert!(page.clients.iter().all(|c| c.tags() == ["even"]));
        q.page = 2;
        let page = b.list(&q).unwrap();
        assert_eq!(page.clients.len(), 50);
        assert_eq!(page.next, None);
    }

    // ---- performance -----------------------------------------------------------------

    #[test]
    fn queries_use_indexes() {
        let b = backend();
        let conn = b.lock();
        let plan = |sql: &str| -> String {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows: Vec<String> = stmt
                .query_map([], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            rows.join("\n")
        };
        for (order, index) in [
            ("id", "client_contacts_by_company"),
            ("first_key ASC, id ASC", "client_contacts_by_first"),
            ("first_key DESC, id DESC", "client_contacts_by_first"),
            ("last_key ASC, id ASC", "client_contacts_by_last "),
            ("last_key DESC, id DESC", "client_contacts_by_last "),
            (
                "last_key ASC, first_key ASC, id ASC",
                "client_contacts_by_last_first",
            ),
            (
                "last_key DESC, first_key DESC, id DESC",
                "client_contacts_by_last_first",
            ),
        ] {
            let p = plan(&format!(
                "SELECT id FROM client_contacts WHERE company = 'c' ORDER BY {order} LIMIT 5"
            ));
            assert!(p.contains(index), "{order}: {p}");
            assert!(!p.contains("TEMP B-TREE"), "{order}: {p}");
        }
        let p = plan(
            "SELECT id FROM client_contacts WHERE company = 'c' AND id IN \
             (SELECT contact_id FROM client_tags WHERE company = 'c' AND tag IN ('a'))",
        );
        assert!(p.contains("client_tags_by_tag"), "{p}");
    }

    #[test]
    fn fifty_thousand_clients_list_quickly() {
        let b = backend();
        let items: Vec<_> = (0..50_000)
            .map(|i| {
                let mut item = attrs(json!({
                    "first_name": format!("First{:05}", (i * 7919) % 50_000),
                    "last_name": format!("Last{}", i % 97),
                    "email": format!("p{i}@example.com"),
                }));
                if i % 1000 == 0 {
                    item.insert("tags".into(), json!(["rare"]));
                }
                item
            })
            .collect();
        b.create_many(&items).unwrap();
        let start = std::time::Instant::now();
        let mut q = query();
        q.sort = Sort::parse("-last_first_name");
        q.page = 120;
        let page = b.list(&q).unwrap();
        assert_eq!(page.clients.len(), 200);
        assert_eq!(page.total, Some(50_000));
        let mut q = query();
        q.tags = vec!["rare".into()];
        assert_eq!(b.list(&q).unwrap().total, Some(50));
        let mut q = query();
        q.fulltext = Some("p4242@".into());
        assert_eq!(b.list(&q).unwrap().total, Some(1));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    // ---- helpers -------------------------------------------------------------------

    #[test]
    fn stamps_always_move_forward() {
        let now = Utc::now();
        let later = format_stamp(now + chrono::Duration::seconds(10));
        let next = next_stamp(&later, now);
        assert!(next > later);
        assert_eq!(next_stamp("garbage", now), format_stamp(now));
        let earlier = format_stamp(now - chrono::Duration::seconds(10));
        assert_eq!(next_stamp(&earlier, now), format_stamp(now));
    }

    #[test]
    fn corrupt_stored_json_is_unavailable_not_a_panic() {
        let b = backend();
        let c = b.create(&attrs(json!({ "phone": "1" }))).unwrap();
        b.lock()
            .execute("UPDATE client_contacts SET attributes = '[1]'", [])
            .unwrap();
        let err = b.get(&c.id).unwrap_err();
        assert_eq!(err.status, Some(503));
        assert!(err.transient);
        assert!(b.list(&query()).is_err());
    }

    #[test]
    fn storage_failures_are_unavailable() {
        let b = backend();
        b.lock().execute_batch("DROP TABLE client_tags").unwrap();
        let err = b
            .create(&attrs(json!({ "phone": "1", "tags": ["a"] })))
            .unwrap_err();
        assert_eq!(err.status, Some(503));
        assert!(err.transient);
        assert_eq!(err.operation, "create");
        // The failed create was rolled back whole.
        assert_eq!(b.list(&query()).unwrap().total, Some(0));
    }
}
