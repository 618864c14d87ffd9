//! The Spectora backend: the four operations of the Clients API (and image uploads)
//! over HTTP, as `SPECTORA_API.md` describes them, behind the same [`Backend`] trait as
//! the embedded store.
//!
//! Reads are retried after any transient failure; writes only when the server said it
//! did not take them. A create whose outcome is unknown (a timeout, a connection lost
//! after sending, a gateway error) is never simply sent again: the client first looks
//! for the new client by its email.

pub mod document;
pub mod transport;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Map, Value};
use tracing::warn;

use self::transport::{Answer, Body, Failure, Request, Transport};
use super::clock::{Clock, SystemClock};
use super::image::Image;
use super::paging::Pager;
use super::{ApiError, Backend, Client, ListQuery, Page, refuse_email_change};
use crate::text;

pub use self::transport::BuildError;

/// The base URL used when none is configured.
pub const DEFAULT_BASE_URL: &str = "https://connect.spectora.com";

/// Pages that the search behind an unknown create may read.
const LOOKUP_PAGES: u32 = 50;

/// A Spectora API key. It never shows in `Debug` output, and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// A key, trimmed; `None` when it is blank.
    pub fn new(key: &str) -> Option<ApiKey> {
        let key = key.trim();
        (!key.is_empty()).then(|| ApiKey(key.to_owned()))
    }

    /// The key itself, for the `Authorization` header and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// How the client reaches the API.
#[derive(Debug, Clone)]
pub struct SpectoraConfig {
    /// Scheme and host, with paths under `/v2` below it.
    pub base_url: String,
    pub api_key: ApiKey,
    /// How long a connection may take to open.
    pub connect_timeout: Duration,
    /// How long one request may take, from sending to the last byte of the answer.
    pub request_timeout: Duration,
    /// Requests a minute, for the whole process; 0 for no limit.
    pub requests_per_minute: u32,
    /// Tries of one request, the first included.
    pub max_attempts: u32,
    /// The first wait before a retry, doubled at each one.
    pub backoff: Duration,
    /// The longest wait between two tries; a `Retry-After` above it ends the request.
    pub max_wait: Duration,
    /// How long an idle connection is kept for the next request.
    pub pool_idle_timeout: Duration,
}

impl SpectoraConfig {
    /// The defaults: 5 s to connect, 30 s a request, 60 requests a minute, 4 tries.
    pub fn new(base_url: impl Into<String>, api_key: ApiKey) -> SpectoraConfig {
        SpectoraConfig {
            base_url: base_url.into(),
            api_key,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            requests_per_minute: 60,
            max_attempts: 4,
            backoff: Duration::from_secs(1),
            max_wait: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(4),
        }
    }

    /// Requests that may go at once: ten seconds' worth, at least one.
    pub fn burst(&self) -> u32 {
        (self.requests_per_minute / 6).max(1)
    }
}

/// The HTTP client of the Spectora Clients API.
pub struct SpectoraClient {
    transport: Transport,
    secret: ApiKey,
}

impl fmt::Debug for SpectoraClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpectoraClient")
            .field("base_url", &self.transport.base())
            .finish_non_exhaustive()
    }
}

impl SpectoraClient {
    /// A client on the real clock.
    pub fn new(config: &SpectoraConfig) -> Result<SpectoraClient, BuildError> {
        SpectoraClient::with_clock(config, Arc::new(SystemClock))
    }

    /// A client whose waits (rate limit, backoff, `Retry-After`) go through `clock`.
    pub fn with_clock(
        config: &SpectoraConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<SpectoraClient, BuildError> {
        Ok(SpectoraClient {
            transport: Transport::new(config, clock)?,
            secret: config.api_key.clone(),
        })
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        self.transport.base()
    }

    /// Sends a request; a failure without an answer becomes an error of `operation`.
    fn send(&self, operation: &'static str, request: &Request) -> Result<Answer, ApiError> {
        self.transport
            .send(request)
            .map_err(|failure| self.failure(operation, &failure))
    }

    fn failure(&self, operation: &'static str, failure: &Failure) -> ApiError {
        let transient = !matches!(failure, Failure::OnRuntime);
        ApiError {
            operation,
            status: None,
            detail: self.scrub(&failure.to_string()),
            pointer: None,
            transient,
        }
    }

    /// The error of an answer that is not a success, without the key in it even if the
    /// server echoed it.
    fn refusal(&self, operation: &'static str, answer: &Answer) -> ApiError {
        let mut error = document::api_error(operation, answer.status.as_u16(), &answer.body);
        error.detail = self.scrub(&error.detail);
        error
    }

    fn scrub(&self, text: &str) -> String {
        text.replace(self.secret.expose(), "<redacted>")
    }

    /// Reads a JSON document from a successful answer.
    fn json(&self, operation: &'static str, answer: &Answer) -> Result<Value, ApiError> {
        serde_json::from_slice(&answer.body).map_err(|e| ApiError {
            operation,
            status: Some(answer.status.as_u16()),
            detail: format!("the answer is not a JSON document: {e}"),
            pointer: None,
            transient: true,
        })
    }

    fn malformed(operation: &'static str, answer: &Answer, problem: String) -> ApiError {
        ApiError {
            operation,
            status: Some(answer.status.as_u16()),
            detail: format!("the answer is not the expected JSON:API document: {problem}"),
            pointer: None,
            transient: false,
        }
    }

    /// One resource from a successful answer, or the error the answer says.
    fn resource(&self, operation: &'static str, answer: &Answer) -> Result<Client, ApiError> {
        if !answer.status.is_success() {
            return Err(self.refusal(operation, answer));
        }
        let document = self.json(operation, answer)?;
        document::single(&document).map_err(|p| Self::malformed(operation, answer, p))
    }

    fn contact_path(id: &str) -> String {
        format!("/v2/contacts/{}", document::encode(id))
    }

    /// Whether an id can name a contact: `.` and `..` would name another route once
    /// the path is normalized on the way, so they name no client.
    fn addressable(id: &str) -> bool {
        let id = id.trim();
        !id.is_empty() && id != "." && id != ".."
    }

    fn no_such_client(operation: &'static str, id: &str) -> ApiError {
        ApiError::invalid(operation, 404, format!("no client with id {id:?}"))
    }

    /// Sends a change of a client: refused before sending when it would change the
    /// email or names no client.
    fn patch(
        &self,
        operation: &'static str,
        id: &str,
        attributes: &Map<String, Value>,
        body: Body,
    ) -> Result<Client, ApiError> {
        refuse_email_change(operation, attributes)?;
        if !Self::addressable(id) {
            return Err(Self::no_such_client(operation, id));
        }
        let request = Request {
            method: Method::PATCH,
            path: Self::contact_path(id),
            body,
        };
        let answer = self.send(operation, &request)?;
        self.resource(operation, &answer)
    }

    /// Sends a create once; `Ok(Err(reason))` when its outcome is unknown.
    fn post(&self, body: &Value) -> Result<Result<Client, String>, ApiError> {
        const OP: &str = "create";
        let request = Request {
            method: Method::POST,
            path: "/v2/contacts".into(),
            body: Body::Json(body.clone()),
        };
        match self.transport.send(&request) {
            Ok(answer) if matches!(answer.status.as_u16(), 500 | 502 | 504) => {
                Ok(Err(format!("the API answered {}", answer.status.as_u16())))
            }
            Ok(answer) => self.resource(OP, &answer).map(Ok),
            Err(Failure::Unknown(reason)) => Ok(Err(self.scrub(&reason))),
            Err(failure) => Err(self.failure(OP, &failure)),
        }
    }

    /// The client with this email, searched the way the session does: full text, then
    /// an exact match after normalizing.
    fn find_by_email(&self, email: &str) -> Result<Option<Client>, ApiError> {
        let mut query = ListQuery::first_page();
        query.fulltext = Some(email.to_owned());
        let mut pager = Pager::new(query, LOOKUP_PAGES);
        while let Some(q) = pager.query() {
            let page = self.list(q)?;
            for client in pager.accept(page) {
                if client
                    .str_attr("email")
                    .map(text::normalize_email)
                    .as_deref()
                    == Some(email)
                {
                    return Ok(Some(client));
                }
            }
        }
        Ok(None)
    }

    /// A create whose first try has an unknown outcome: look for the client, send again
    /// only when it is not there, and look again when the second try is refused for its
    /// email or is lost too.
    fn resolve_create(
        &self,
        body: &Value,
        attributes: &Map<String, Value>,
        reason: String,
    ) -> Result<Client, ApiError> {
        const OP: &str = "create";
        let email = attributes
            .get("email")
            .and_then(Value::as_str)
            .map(text::normalize_email)
            .filter(|e| !e.is_empty());
        let Some(email) = email else {
            warn!(reason = %reason, "a create without an email has an unknown outcome; it is not sent again");
            return Err(ApiError {
                operation: OP,
                status: None,
                detail: format!(
                    "the outcome of the create is unknown ({reason}) and the client has no email \
                     to look it up by, so it was not sent again; check the clients before \
                     running the rule again"
                ),
                pointer: None,
                transient: false,
            });
        };
        warn!(reason = %reason, "a create has an unknown outcome; looking for the client before sending it again");
        if let Some(client) = self.find_by_email(&email)? {
            return Ok(client);
        }
        let second = match self.post(body) {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(second)) => second,
            // Refused because the email is taken: the first try did create it.
            Err(error)
                if error.status == Some(422)
                    && error.pointer.as_deref() == Some("/data/attributes/email") =>
            {
                return self.find_by_email(&email)?.ok_or(error);
            }
            Err(error) => return Err(error),
        };
        self.find_by_email(&email)?.ok_or_else(|| ApiError {
            operation: OP,
            status: None,
            detail: format!("the outcome of the create is unknown twice ({reason}; {second})"),
            pointer: None,
            transient: true,
        })
    }
}

impl Backend for SpectoraClient {
    fn list(&self, query: &ListQuery) -> Result<Page, ApiError> {
        const OP: &str = "list";
        let request = Request {
            method: Method::GET,
            path: format!("/v2/contacts?{}", document::list_query(query)),
            body: Body::None,
        };
        let answer = self.send(OP, &request)?;
        if !answer.status.is_success() {
            return Err(self.refusal(OP, &answer));
        }
        let document = self.json(OP, &answer)?;
        document::page(&document, query).map_err(|p| Self::malformed(OP, &answer, p))
    }

    fn get(&self, id: &str) -> Result<Option<Client>, ApiError> {
        const OP: &str = "get";
        if !Self::addressable(id) {
            return Ok(None);
        }
        let request = Request {
            method: Method::GET,
            path: Self::contact_path(id),
            body: Body::None,
        };
        let answer = self.send(OP, &request)?;
        if answer.status.as_u16() == 404 {
            return Ok(None);
        }
        self.resource(OP, &answer).map(Some)
    }

    fn create(&self, attributes: &Map<String, Value>) -> Result<Client, ApiError> {
        let body = document::write_body(None, attributes);
        match self.post(&body)? {
            Ok(client) => Ok(client),
            Err(reason) => self.resolve_create(&body, attributes, reason),
        }
    }

    fn update(&self, id: &str, attributes: &Map<String, Value>) -> Result<Client, ApiError> {
        let body = Body::Json(document::write_body(Some(id), attributes));
        self.patch("update", id, attributes, body)
    }

    fn set_image(
        &self,
        id: &str,
        attributes: &Map<String, Value>,
        image: &Image,
    ) -> Result<Client, ApiError> {
        let body = Body::Form {
            parts: document::form_parts(attributes),
            image: image.clone(),
        };
        self.patch("set_image", id, attributes, body)
    }

    fn name(&self) -> &'static str {
        "spectora"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_never_show_in_debug_output() {
        let key = ApiKey::new("  sk_live_very_secret ").unwrap();
        assert_eq!(key.expose(), "sk_live_very_secret");
        let config = SpectoraConfig::new("http://127.0.0.1:9", key);
        assert!(!format!("{config:?}").contains("very_secret"));
        let client = SpectoraClient::new(&config).unwrap();
        assert!(!format!("{client:?}").contains("very_secret"));
        assert!(ApiKey::new("  ").is_none());
    }

    #[test]
    fn base_urls_are_checked() {
        let key = ApiKey::new("k").unwrap();
        for url in ["connect.spectora.com", "ftp://x", "http://"] {
            let config = SpectoraConfig::new(url, key.clone());
            assert!(SpectoraClient::new(&config).is_err(), "{url}");
        }
        let config = SpectoraConfig::new("https://connect.spectora.com/", key);
        let client = SpectoraClient::new(&config).unwrap();
        assert_eq!(client.base_url(), "https://connect.spectora.com");
    }

    #[test]
    fn the_burst_is_ten_seconds_worth() {
        let key = ApiKey::new("k").unwrap();
        let mut config = SpectoraConfig::new("http://x", key);
        assert_eq!(config.burst(), 10);
        config.requests_per_minute = 5;
        assert_eq!(config.burst(), 1);
    }

    #[test]
    fn calls_on_an_async_task_are_refused_not_a_panic() {
        let key = ApiKey::new("test-key-0123").unwrap();
        let client = SpectoraClient::new(&SpectoraConfig::new("http://127.0.0.1:9", key)).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = runtime.block_on(async { client.get("1") }).unwrap_err();
        assert!(!err.transient);
        assert!(err.detail.contains("worker thread"), "{err}");
        // Dropping the client inside a runtime does not panic either.
        runtime.block_on(async move { drop(client) });
    }
}
