//! Sending one request to the Spectora API: the rate limiter, timeouts, retries with
//! backoff and `Retry-After`, on a small async runtime of the client's own that blocking
//! callers (the worker threads) drive.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use tracing::{debug, warn};

use super::SpectoraConfig;
use crate::clients::clock::Clock;
use crate::clients::image::Image;
use crate::clients::ratelimit::RateLimiter;

/// What the client accepts: both JSON media types that Spectora's answers are seen with.
const ACCEPTED: &str = "application/vnd.api+json, application/json";

/// The largest answer read; a page of 200 clients is far smaller.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// The body of a request.
#[derive(Debug, Clone)]
pub enum Body {
    None,
    Json(serde_json::Value),
    /// Text parts, then the image in `data[attributes][image]`.
    Form {
        parts: Vec<(String, String)>,
        image: Image,
    },
}

/// One request: a method, a path with its query, a body.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub body: Body,
}

impl Request {
    /// Reads may be sent again after any transient failure; writes only after an answer
    /// that says the server did not take them (429, 503) or a failure to connect.
    fn idempotent(&self) -> bool {
        self.method == Method::GET
    }
}

/// The server's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// No answer came.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    /// The request never reached the server (it could not connect): nothing happened.
    #[error("{0}")]
    NotSent(String),
    /// The request may have reached the server: whether it did anything is unknown.
    #[error("{0}")]
    Unknown(String),
    /// The client was called where it must not block.
    #[error("the Spectora client was called on an async task; it must run on a worker thread")]
    OnRuntime,
}

/// The sending half of the client.
pub struct Transport {
    runtime: Option<tokio::runtime::Runtime>,
    http: reqwest::Client,
    base: String,
    auth: HeaderValue,
    limiter: Arc<RateLimiter>,
    clock: Arc<dyn Clock>,
    max_attempts: u32,
    backoff: Duration,
    max_wait: Duration,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the authorization header.
        f.debug_struct("Transport")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which is refused inside another
        // runtime (the last holder may be `serve`'s); shutting down in the background
        // is allowed anywhere.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Why the client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the Spectora base URL {url:?} is not an http or https URL")]
    BaseUrl { url: String },
    #[error("the API key holds characters that cannot go in an HTTP header")]
    Key,
    #[error("cannot start the HTTP client: {0}")]
    Start(String),
}

impl Transport {
    pub fn new(config: &SpectoraConfig, clock: Arc<dyn Clock>) -> Result<Transport, BuildError> {
        let base = config.base_url.trim().trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base).map_err(|_| BuildError::BaseUrl {
            url: config.base_url.clone(),
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(BuildError::BaseUrl {
                url: config.base_url.clone(),
            });
        }
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", config.api_key.expose()))
            .map_err(|_| BuildError::Key)?;
        // Marked sensitive, so that no debug output of the HTTP stack shows it.
        auth.set_sensitive(true);

        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            // Below the keep-alive of common servers (5 s for many), so that an idle
            // connection is dropped by us before the server closes it under a request.
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(8)
            .tcp_keepalive(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("clientrules/", env!("CARGO_PKG_VERSION")));
        let loopback = url.host_str().is_some_and(|host| {
            host == "localhost"
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        if loopback {
            builder = builder.no_proxy();
        }
        let http = builder
            .build()
            .map_err(|e| BuildError::Start(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("spectora-http")
            .enable_all()
            .build()
            .map_err(|e| BuildError::Start(e.to_string()))?;
        let limiter = Arc::new(RateLimiter::per_minute(
            config.requests_per_minute,
            config.burst(),
            clock.clone(),
        ));
        Ok(Transport {
            runtime: Some(runtime),
            http,
            base,
            auth,
            limiter,
            clock,
            max_attempts: config.max_attempts.max(1),
            backoff: config.backoff,
            max_wait: config.max_wait,
        })
    }

    /// The base URL, for logs.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Runs a future on the client's runtime from a blocking thread.
    fn block_on<F: Future>(&self, future: F) -> Result<F::Output, Failure> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Failure::OnRuntime);
        }
        match &self.runtime {
            Some(runtime) => Ok(runtime.block_on(future)),
            None => Err(Failure::NotSent("the HTTP client is shut down".into())),
        }
    }

    /// Sends a request, waiting for the rate limiter and retrying what may be retried.
    /// Returns the last answer, success or not, or the failure when none came.
    pub fn send(&self, request: &Request) -> Result<Answer, Failure> {
        let mut attempt = 1;
        loop {
            self.limiter.acquire();
            let last = attempt >= self.max_attempts;
            let wait = match self.block_on(self.once(request))? {
                Ok(received) => match self.retry_wait(request, &received, attempt, last) {
                    Some(wait) => wait,
                    None => return Ok(received.into()),
                },
                Err(Failure::NotSent(reason)) if !last => {
                    debug!(attempt, reason = %reason, path = %request.path, "retrying a request that could not connect");
                    self.backoff(attempt)
                }
                Err(Failure::Unknown(reason)) if request.idempotent() && !last => {
                    debug!(attempt, reason = %reason, path = %request.path, "retrying a read");
                    self.backoff(attempt)
                }
                Err(failure) => return Err(failure),
            };
            self.clock.sleep(wait);
            attempt += 1;
        }
    }

    /// How long to wait before sending again after this answer, or `None` to keep it.
    fn retry_wait(
        &self,
        request: &Request,
        received: &Received,
        attempt: u32,
        last: bool,
    ) -> Option<Duration> {
        let status = received.status;
        let retry = status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::SERVICE_UNAVAILABLE
            || (request.idempotent() && status.is_server_error());
        if !retry || last {
            return None;
        }
        let wait = match retry_after(&received.headers, self.clock.wall()) {
            Some(wait) if wait > self.max_wait => {
                warn!(
                    status = status.as_u16(),
                    retry_after_s = wait.as_secs(),
                    max_wait_s = self.max_wait.as_secs(),
                    "the API asks for a longer wait than one request may take; the job retries later"
                );
                return None;
            }
            Some(wait) => wait,
            None => self.backoff(attempt),
        };
        if status == StatusCode::TOO_MANY_REQUESTS {
            // Every rule waits, not only this one.
            self.limiter.hold_until(self.clock.now() + wait);
        }
        debug!(
            status = status.as_u16(),
            attempt,
            wait_ms = wait.as_millis() as u64,
            path = %request.path,
            "retrying a request"
        );
        Some(wait)
    }

    /// Exponential backoff with jitter: about `backoff × 2^(attempt-1)`, capped.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_wait);
        // Between half and all of it, so that workers that failed together spread out.
        exp / 2 + exp.mul_f64(fastrand::f64() / 2.0)
    }

    async fn once(&self, request: &Request) -> Result<Received, Failure> {
        let url = format!("{}{}", self.base, request.path);
        let mut builder = self
            .http
            .request(request.method.clone(), url)
            .header(AUTHORIZATION, self.auth.clone())
            .header(ACCEPT, ACCEPTED);
        builder = match &request.body {
            Body::None => builder,
            Body::Json(value) => builder
                .header(CONTENT_TYPE, "application/json")
                .body(value.to_string()),
            Body::Form { parts, image } => {
                let mut form = reqwest::multipart::Form::new();
                for (name, value) in parts {
                    form = form.text(name.clone(), value.clone());
                }
                let file = reqwest::multipart::Part::stream(image.bytes().clone())
                    .file_name(image.filename().to_owned())
                    .mime_str(image.media_type())
                    .map_err(|e| Failure::NotSent(e.to_string()))?;
                builder.multipart(form.part("data[attributes][image]", file))
            }
        };
        let mut response = builder.send().await.map_err(classify)?;
        let status = response.status();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(Failure::Unknown(format!(
                    "the answer is larger than {} MiB",
                    MAX_BODY >> 20
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Received {
            status,
            headers,
            body: Bytes::from(body),
        })
    }
}

/// An answer with its headers, inside the retry loop.
struct Received {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl From<Received> for Answer {
    fn from(r: Received) -> Answer {
        Answer {
            status: r.status,
            body: r.body,
        }
    }
}

/// A transport error: not sent when it failed to connect, unknown otherwise.
fn classify(error: reqwest::Error) -> Failure {
    // Without the URL: it holds nothing secret, but the message is shorter without it.
    let reason = error.without_url();
    // The causes say what happened ("connection refused"); the top line only that
    // sending failed.
    let mut text = reason.to_string();
    let mut source = std::error::Error::source(&reason);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    let text = if reason.is_timeout() {
        format!("timed out ({text})")
    } else {
        text
    };
    if reason.is_connect() || reason.is_builder() {
        Failure::NotSent(text)
    } else {
        Failure::Unknown(text)
    }
}

/// The wait a `Retry-After` header asks for: whole seconds, or an HTTP date measured
/// against `now` (a date in the past means no wait).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            retry_after(&headers("7"), now),
            Some(Duration::from_secs(7))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(42));
        assert_eq!(
            retry_after(&headers(&later), now),
            Some(Duration::from_secs(42))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(42));
        assert_eq!(retry_after(&headers(&earlier), now), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers("soon"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }
}
