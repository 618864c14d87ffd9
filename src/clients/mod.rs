//! The API layer: clients, the four operations of the Spectora Clients API as a trait,
//! and the two backends behind it (the embedded store and the Spectora HTTP client).

pub mod clock;
pub mod embedded;
pub mod image;
pub mod paging;
pub mod ratelimit;
pub mod session;
pub mod spectora;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Attributes that the API computes and that a write never sends.
pub const READ_ONLY: &[&str] = &["id", "buyer_id", "image_url", "created_at", "updated_at"];

/// Largest page the Spectora API serves; the API layer never asks for more.
pub const MAX_PAGE_SIZE: u32 = 200;

/// A client (a Spectora contact): its id and every attribute the API returned,
/// known or not, so that a read-modify-write never drops an attribute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Client {
    pub id: String,
    pub attributes: Map<String, Value>,
}

impl Client {
    /// A string attribute, or `None` when it is absent, null or not a string.
    pub fn str_attr(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).and_then(Value::as_str)
    }

    /// The client's tags; an absent or malformed list reads as no tags.
    pub fn tags(&self) -> Vec<String> {
        match self.attributes.get("tags") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The client as one flat JSON object: `id` beside the attributes, as scripts see it.
    pub fn to_flat(&self) -> Map<String, Value> {
        let mut map = Map::with_capacity(self.attributes.len() + 1);
        map.insert("id".into(), Value::String(self.id.clone()));
        for (k, v) in &self.attributes {
            if k != "id" {
                map.insert(k.clone(), v.clone());
            }
        }
        map
    }
}

/// How a list is ordered, as the Spectora `sort` parameter names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    FirstName,
    LastName,
    LastFirstName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort {
    pub key: SortKey,
    pub descending: bool,
}

impl Sort {
    /// Parses `first_name`, `last_name` or `last_first_name`, with an optional leading `-`.
    pub fn parse(text: &str) -> Option<Sort> {
        let (descending, name) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let key = match name {
            "first_name" => SortKey::FirstName,
            "last_name" => SortKey::LastName,
            "last_first_name" => SortKey::LastFirstName,
            _ => return None,
        };
        Some(Sort { key, descending })
    }

    pub fn as_param(&self) -> String {
        let name = match self.key {
            SortKey::FirstName => "first_name",
            SortKey::LastName => "last_name",
            SortKey::LastFirstName => "last_first_name",
        };
        if self.descending {
            format!("-{name}")
        } else {
            name.to_owned()
        }
    }
}

/// One list request: the filters and the page of the Spectora list route.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    pub id: Option<String>,
    pub buyer_id: Option<String>,
    pub fulltext: Option<String>,
    /// Tags sent as `filter[tag]`; whether the server matches any or all of them is
    /// unknown, so callers post-filter.
    pub tags: Vec<String>,
    pub sort: Option<Sort>,
    /// Page number, starting at 1.
    pub page: u32,
    /// Records a page, at most [`MAX_PAGE_SIZE`].
    pub page_size: u32,
}

impl ListQuery {
    pub fn first_page() -> ListQuery {
        ListQuery {
            page: 1,
            page_size: MAX_PAGE_SIZE,
            ..ListQuery::default()
        }
    }
}

/// One page of a list answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub clients: Vec<Client>,
    /// The next page number, when the server says there is one.
    pub next: Option<u32>,
    /// The total number of records matching, when the server says.
    pub total: Option<u64>,
}

/// A failed API operation. `status` is the HTTP status (or the one the embedded store
/// would answer), `pointer` the JSON:API source pointer of the offending attribute.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{operation}: {}{detail}", status.map(|s| format!("{s} ")).unwrap_or_default())]
pub struct ApiError {
    pub operation: &'static str,
    pub status: Option<u16>,
    pub detail: String,
    pub pointer: Option<String>,
    /// Whether trying again later may succeed (5xx, 429, timeouts, network errors).
    pub transient: bool,
}

impl ApiError {
    /// A refusal of the request itself (a 4xx): permanent.
    pub fn invalid(operation: &'static str, status: u16, detail: impl Into<String>) -> ApiError {
        ApiError {
            operation,
            status: Some(status),
            detail: detail.into(),
            pointer: None,
            transient: false,
        }
    }

    /// A refusal that names the attribute at fault.
    pub fn unprocessable(
        operation: &'static str,
        attribute: &str,
        detail: impl Into<String>,
    ) -> ApiError {
        ApiError {
            operation,
            status: Some(422),
            detail: detail.into(),
            pointer: Some(format!("/data/attributes/{attribute}")),
            transient: false,
        }
    }

    /// A failure of the backend itself (storage, network): worth retrying.
    pub fn unavailable(operation: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            operation,
            status: Some(503),
            detail: detail.into(),
            pointer: None,
            transient: true,
        }
    }
}

/// The most tags one client may carry: more is a script's mistake, not a client.
pub const MAX_TAGS: usize = 1_000;

/// The deepest an attribute's value may nest (a list in a map in a list ...). Stored
/// attributes are read back with a JSON parser that stops at 128 levels.
pub const MAX_ATTRIBUTE_DEPTH: usize = 32;

/// How deeply a JSON value nests: 0 for a scalar, 1 for a flat list or map. Iterative,
/// so that no value is too deep to measure.
pub fn json_depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        match value {
            Value::Array(items) => stack.extend(items.iter().map(|v| (v, depth + 1))),
            Value::Object(map) => stack.extend(map.values().map(|v| (v, depth + 1))),
            _ => {}
        }
    }
    deepest
}

/// Refuses a write that would change a client's email, which the API never allows:
/// before anything is sent, with the attribute named as the API would name it.
pub fn refuse_email_change(
    operation: &'static str,
    attributes: &Map<String, Value>,
) -> Result<(), ApiError> {
    if attributes.contains_key("email") {
        return Err(ApiError::unprocessable(
            operation,
            "email",
            "email cannot be changed once a client exists",
        ));
    }
    Ok(())
}

/// The four operations of the Spectora Clients API. Every `clients::` script function
/// is written once over this trait. Implementations are blocking: scripts run on
/// worker threads, never on the async runtime.
pub trait Backend: Send + Sync {
    /// One page of clients matching the query's filters, in the query's order.
    fn list(&self, query: &ListQuery) -> Result<Page, ApiError>;

    /// The client with this id, or `None`.
    fn get(&self, id: &str) -> Result<Option<Client>, ApiError>;

    /// Creates a client from the given attributes (read-only ones are ignored).
    fn create(&self, attributes: &Map<String, Value>) -> Result<Client, ApiError>;

    /// Changes only the given attributes of a client and returns it as it now is.
    fn update(&self, id: &str, attributes: &Map<String, Value>) -> Result<Client, ApiError>;

    /// Uploads a client's image, with any attributes to change in the same request, and
    /// returns the client as it now is. A backend that keeps no images refuses.
    fn set_image(
        &self,
        id: &str,
        attributes: &Map<String, Value>,
        image: &image::Image,
    ) -> Result<Client, ApiError> {
        let _ = (id, attributes, image);
        Err(ApiError::invalid(
            "set_image",
            501,
            format!("the {} backend keeps no images", self.name()),
        ))
    }

    /// A short name for logs and run records: `embedded` or `spectora`.
    fn name(&self) -> &'static str;
}
