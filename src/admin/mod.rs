//! The admin API under `/api`, and `/healthz` and `/readyz`. Without a token it answers
//! only callers on loopback.

pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::server::AppState;
use crate::store::RunFilter;
use crate::triggers::webhook::error_response;
use crate::worker::current_rules;

/// The routes of the admin API and the health checks.
pub fn routes(app: Arc<AppState>) -> Router<Arc<AppState>> {
    let api = Router::new()
        .route("/api/rules", get(rules))
        .route("/api/events", get(events))
        .route("/api/events/{id}", get(event))
        .route("/api/runs", get(runs))
        .route("/api/runs/{id}", get(run))
        .route_layer(middleware::from_fn_with_state(app, guard));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_text))
        .merge(api)
}

/// Lets a request through with the right bearer token, or from loopback when no token
/// is set.
async fn guard(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    match &app.admin_token {
        Some(token) => {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let matches = given.is_some_and(|g| {
                use subtle::ConstantTimeEq;
                g.as_bytes().ct_eq(token.as_bytes()).into()
            });
            if !matches {
                return error_response(StatusCode::UNAUTHORIZED, "unauthorized");
            }
        }
        None => {
            let peer = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip());
            if !peer.is_some_and(|ip| ip.is_loopback()) {
                return error_response(
                    StatusCode::FORBIDDEN,
                    "the admin API answers only on loopback unless an admin token is set",
                );
            }
        }
    }
    next.run(request).await
}

async fn metrics_text(State(app): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

async fn ready(State(app): State<Arc<AppState>>) -> Response {
    let store = app.store.clone();
    match tokio::task::spawn_blocking(move || store.ping()).await {
        Ok(Ok(())) => "ready\n".into_response(),
        _ => error_response(StatusCode::SERVICE_UNAVAILABLE, "the store does not answer"),
    }
}

async fn rules(State(app): State<Arc<AppState>>) -> Response {
    let set = current_rules(&app.rules);
    let rules: Vec<_> = set
        .rules()
        .iter()
        .map(|r| {
            // A rule whose file now has errors runs its last good version.
            let stale = set.stale.get(&r.file);
            json!({
                "name": r.name,
                "status": if stale.is_some() { "stale" } else { "ok" },
                "file_errors": stale.map(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>()).unwrap_or_default(),
                "description": r.description,
                "file": r.file,
                "path": r.webhook().map(|w| &w.path),
                "verified": r.webhook().is_some_and(|w| w.verify.as_ref().is_some_and(|v| v.authenticates())),
                "warnings": r.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
        })
        .collect();
    let errors: Vec<String> = set.errors().map(ToString::to_string).collect();
    Json(json!({ "rules": rules, "errors": errors })).into_response()
}

#[derive(Debug, Deserialize)]
struct EventQuery {
    rule: Option<String>,
    limit: Option<usize>,
}

async fn events(State(app): State<Arc<AppState>>, Query(q): Query<EventQuery>) -> Response {
    let store = app.store.clone();
    let result = tokio::task::spawn_blocking(move || {
        store.events(q.rule.as_deref(), q.limit.unwrap_or(100))
    })
    .await;
    match result {
        Ok(Ok(events)) => Json(json!({ "events": events })).into_response(),
        _ => error_response(StatusCode::SERVICE_UNAVAILABLE, "the store does not answer"),
    }
}

async fn event(State(app): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let store = app.store.clone();
    match tokio::task::spawn_blocking(move || store.event(&id)).await {
        Ok(Ok(Some(event))) => Json(event.to_script_value()).into_response(),
        Ok(Ok(None)) => error_response(StatusCode::NOT_FOUND, "no such event"),
        _ => error_response(StatusCode::SERVICE_UNAVAILABLE, "the store does not answer"),
    }
}

#[derive(Debug, Deserialize)]
struct RunQuery {
    rule: Option<String>,
    status: Option<String>,
    event: Option<String>,
    client: Option<String>,
    limit: Option<usize>,
}

async fn runs(State(app): State<Arc<AppState>>, Query(q): Query<RunQuery>) -> Response {
    let filter = RunFilter {
        rule: q.rule,
        status: q.status,
        event_id: q.event,
        client_id: q.client,
        limit: q.limit.unwrap_or(100),
    };
    let store = app.store.clone();
    match tokio::task::spawn_blocking(move || store.runs(&filter)).await {
        Ok(Ok(runs)) => {
            let records: Vec<_> = runs.into_iter().map(|r| r.record).collect();
            Json(json!({ "runs": records })).into_response()
        }
        _ => error_response(StatusCode::SERVICE_UNAVAILABLE, "the store does not answer"),
    }
}

async fn run(State(app): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let store = app.store.clone();
    match tokio::task::spawn_blocking(move || store.run(&id)).await {
        Ok(Ok(Some(run))) => Json(run.record).into_response(),
        Ok(Ok(None)) => error_response(StatusCode::NOT_FOUND, "no such run"),
        _ => error_response(StatusCode::SERVICE_UNAVAILABLE, "the store does not answer"),
    }
}
