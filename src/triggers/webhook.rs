//! The webhook trigger: `POST <path>` of a rule becomes a stored event and a job,
//! answered 202 (or the rule's redirect) only once both are committed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Map, Value, json};
use tracing::{debug, error, trace, warn};

use super::decode::{self, DecodeError};
use super::verify;
use crate::app::AppState;
use crate::event::{Event, FileMeta, Source};
use crate::store::{DedupeKey, Inserted, NewEvent, NewFile, NewJob};
use crate::worker::current_rules;

/// A JSON error answer: `{"error": "..."}`.
/// Bodies that may be in the middle of being received at once.
pub const MAX_READERS: usize = 256;

/// The deepest a decoded body may nest (JSON, or form keys such as `a[b][c]`).
pub const MAX_BODY_DEPTH: usize = 64;

pub fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Headers as a script sees them: lowercase names, repeated values joined by `, `.
pub fn header_map(headers: &HeaderMap) -> Map<String, Value> {
    let mut map: Map<String, Value> = Map::new();
    for (name, value) in headers {
        let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match map.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&text);
            }
            _ => {
                map.insert(name.as_str().to_owned(), Value::String(text));
            }
        }
    }
    map
}

/// Query parameters with the form nesting rules.
pub fn query_map(query: Option<&str>) -> Map<String, Value> {
    let pairs = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()));
    match decode::nest_pairs(pairs) {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The sender's address: the peer, or for a peer that is a trusted proxy, the nearest
/// address in `X-Forwarded-For` that is not one. An entry that is not an address (with
/// or without a port) ends the walk as an unknown sender, which no allow list admits:
/// whatever stands to the left of it was written by someone no proxy vouches for.
/// IPv4 senders seen through an IPv6 socket are compared as IPv4.
pub fn sender_address(
    extensions: &axum::http::Extensions,
    headers: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> IpAddr {
    const UNKNOWN: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical())
        .unwrap_or(UNKNOWN);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .flat_map(|v| v.split(','))
        .collect();
    let mut sender = peer;
    for entry in entries.iter().rev() {
        let Some(ip) = parse_hop(entry.trim()) else {
            return UNKNOWN;
        };
        sender = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    sender
}

/// One `X-Forwarded-For` entry: an address, or an address with a port.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// Every request that no other route takes: a rule's webhook, or 404.
pub async fn handle(State(app): State<Arc<AppState>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let rules = current_rules(&app.rules);
    let Some(rule) = rules.by_path(&path).cloned() else {
        if rules.broken_paths.contains(&path) {
            // The rule is there but broken: a sender retries a 503, and the delivery
            // is taken once the file is fixed.
            warn!(path = %path, "a delivery came for a rule that failed to load; answering 503");
            let mut response = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the rule for {path} failed to load; try again later"),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("60"));
            return response;
        }
        trace!(path = %path, "no rule for this path");
        return error_response(StatusCode::NOT_FOUND, format!("no rule listens on {path}"));
    };
    let Some(hook) = rule.webhook().cloned() else {
        return error_response(StatusCode::NOT_FOUND, format!("no rule listens on {path}"));
    };
    if request.method() != Method::POST {
        let mut response = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} accepts POST, not {}", request.method()),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return response;
    }

    let (parts, body) = request.into_parts();
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("expected a body of at most {} bytes", app.body_limit),
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > app.body_limit as u64) {
        return too_large();
    }
    // Bodies being read at once are bounded, so that many slow senders cannot hold
    // memory without limit; a sender told 503 tries again later.
    let Ok(_reading) = app.readers.clone().try_acquire_owned() else {
        let mut response = error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many deliveries are being received at once; try again shortly",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        return response;
    };
    // A body that trickles in is cut off, so that it holds no connection for long.
    let read = axum::body::to_bytes(Body::new(body), app.body_limit);
    let Ok(read) = tokio::time::timeout(app.body_timeout, read).await else {
        trace!(rule = %rule.name, "body not received in time");
        return error_response(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "expected the whole body within {}",
                humantime::format_duration(app.body_timeout)
            ),
        );
    };
    let raw = match read {
        Ok(bytes) => bytes,
        Err(e) => {
            let length_error = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if length_error || e.to_string().contains("length limit") {
                return too_large();
            }
            return error_response(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            );
        }
    };

    if let Some(verification) = &hook.verify {
        let peer = sender_address(&parts.extensions, &parts.headers, &app.trusted_proxies);
        let delivery = verify::Delivery {
            headers: &parts.headers,
            query: parts.uri.query(),
            body: &raw,
            peer,
            now: Utc::now().timestamp(),
        };
        if let Err(reason) = verify::verify(verification, &delivery) {
            debug!(rule = %rule.name, reason = %reason, "delivery failed verification");
            app.metrics.rejected(&rule.name, reason.label());
            return error_response(StatusCode::UNAUTHORIZED, "unauthorized");
        }
    }

    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let decoded =
        match decode::decode(content_type.as_deref(), raw.clone(), &app.decode_limits).await {
            Ok(decoded) => decoded,
            Err(e) => {
                let status = match e {
                    DecodeError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    DecodeError::Malformed { .. } => StatusCode::BAD_REQUEST,
                };
                trace!(rule = %rule.name, error = %e, "undecodable body");
                return error_response(status, e.to_string());
            }
        };
    // Events are stored as JSON and read back by a parser that stops at 128 levels.
    let depth = crate::clients::json_depth(&decoded.body);
    if depth > MAX_BODY_DEPTH {
        trace!(rule = %rule.name, depth, "body nested too deeply");
        return error_response(
            StatusCode::BAD_REQUEST,
            format!(
                "expected a body nested at most {MAX_BODY_DEPTH} levels deep, found {depth} levels"
            ),
        );
    }

    let mut files = Vec::new();
    let mut metas = Vec::new();
    for file in decoded.files {
        let id = Event::new_id();
        metas.push(FileMeta {
            id: id.clone(),
            field: file.field,
            filename: file.filename,
            content_type: file.content_type,
            size: file.bytes.len() as u64,
        });
        files.push(NewFile {
            id,
            bytes: file.bytes,
        });
    }
    let event = Event {
        id: Event::new_id(),
        source: Source::Webhook,
        received_at: Utc::now(),
        path: path.clone(),
        method: parts.method.to_string(),
        query: query_map(parts.uri.query()),
        headers: header_map(&parts.headers),
        body: decoded.body,
        files: metas,
        raw,
        schedule: None,
    };
    let jobs = vec![NewJob {
        rule: rule.name.clone(),
        max_attempts: rule.retry.attempts,
    }];

    // The dedupe key comes from the verified, decoded event.
    let dedupe = match &hook.dedupe {
        Some(expression) => {
            let expression = expression.clone();
            let value = event.to_script_value();
            match tokio::task::spawn_blocking(move || crate::script::eval_key(&expression, &value))
                .await
            {
                Ok(Ok(Some(key))) => Some(DedupeKey {
                    rule: rule.name.clone(),
                    key,
                    window: app.dedupe_window,
                }),
                Ok(Ok(None)) => None,
                Ok(Err(message)) => {
                    // A delivery is never lost to its dedupe expression: it runs undeduplicated.
                    warn!(rule = %rule.name, error = %message, "the dedupe expression failed; storing the delivery without a key");
                    None
                }
                Err(_) => None,
            }
        }
        None => None,
    };

    // The event and its job are durable before the answer; a store that cannot commit
    // gets the sender to try again.
    let event_id = event.id.clone();
    let stored = app
        .ingest
        .submit(NewEvent {
            event,
            files,
            jobs,
            dedupe,
        })
        .await;
    match stored {
        Ok(Inserted::Stored) => {}
        Ok(Inserted::Duplicate(first)) => {
            debug!(rule = %rule.name, event_id = %first, "duplicate delivery");
            app.metrics.delivery(&rule.name, 200);
            return (
                StatusCode::OK,
                Json(json!({ "event_id": first, "duplicate": true })),
            )
                .into_response();
        }
        Err(e) => {
            error!(rule = %rule.name, error = %e, "cannot store the event; answering 503");
            app.metrics.delivery(&rule.name, 503);
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "the event could not be stored; try again",
            );
        }
    }
    app.wake.notify();
    debug!(rule = %rule.name, event_id = %event_id, "event stored");

    if let Some(url) = &hook.redirect {
        return match header::HeaderValue::from_str(url) {
            Ok(location) => {
                app.metrics.delivery(&rule.name, 303);
                let mut response = StatusCode::SEE_OTHER.into_response();
                response.headers_mut().insert(header::LOCATION, location);
                response
            }
            Err(_) => (
                StatusCode::ACCEPTED,
                Json(json!({"event_id": event_id, "duplicate": false})),
            )
                .into_response(),
        };
    }
    app.metrics.delivery(&rule.name, 202);
    (
        StatusCode::ACCEPTED,
        Json(json!({ "event_id": event_id, "duplicate": false })),
    )
        .into_response()
}
