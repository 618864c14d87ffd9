//! The admin API under `/api`, and `/healthz` and `/readyz`. Without a token it answers
//! only callers on loopback.

pub mod metrics;

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use chrono::{DateTime, Utc};

use crate::app::AppState;
use crate::rules::ScheduleTrigger;
use crate::store::{RunFilter, ScheduleState};
use crate::triggers::webhook::error_response;
use crate::worker::current_rules;

/// The routes of the admin API and the health checks.
pub fn routes(app: Arc<AppState>) -> Router<Arc<AppState>> {
    let api = Router::new()
        .route("/api/rules", get(rules))
        .route("/api/events", get(events))
        .route("/api/events/{id}", get(event))
        .route("/api/events/{id}/replay", post(replay_event))
        .route("/api/rules/{name}/replay-dead", post(replay_dead))
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
            // Behind a proxy on this host the peer is always loopback: the sender the
            // proxy names is the one that counts.
            let sender = crate::triggers::webhook::sender_address(
                request.extensions(),
                request.headers(),
                &app.trusted_proxies,
            );
            if !sender.is_loopback() {
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
        Ok(Err(e)) => error_response(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(_) => error_response(StatusCode::SERVICE_UNAVAILABLE, "the store does not answer"),
    }
}

async fn rules(State(app): State<Arc<AppState>>) -> Response {
    let set = current_rules(&app.rules);
    let store = app.store.clone();
    let states = match tokio::task::spawn_blocking(move || store.schedule_states()).await {
        Ok(Ok(states)) => states,
        _ => return error_response(StatusCode::SERVICE_UNAVAILABLE, "the store does not answer"),
    };
    let now = chrono::Utc::now();
    let rules: Vec<_> = set
        .rules()
        .iter()
        .map(|r| {
            let state = states.iter().find(|s| s.rule == r.name);
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
                "schedule": r.schedule().map(|s| schedule_status(s, state, now)),
                "warnings": r.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
        })
        .collect();
    let errors: Vec<String> = set.errors().map(ToString::to_string).collect();
    Json(json!({ "rules": rules, "errors": errors })).into_response()
}

/// A scheduled rule's status: its schedule, its next tick, and what became of its
/// ticks so far, skipped ones counted by reason.
fn schedule_status(
    trigger: &ScheduleTrigger,
    state: Option<&ScheduleState>,
    now: DateTime<Utc>,
) -> serde_json::Value {
    let next = trigger.schedule.next_after(now).map(|f| f.at);
    let (fired, overlap, missed) = state.map_or((0, 0, 0), |s| {
        (s.fired, s.skipped_overlap, s.skipped_missed)
    });
    json!({
        "cron": trigger.cron(),
        "timezone": trigger.timezone().name(),
        "overlap": trigger.overlap,
        "catch_up": trigger.catch_up,
        "next": next,
        "next_local": next.map(|t| t.with_timezone(&trigger.timezone()).to_rfc3339()),
        "last_tick": state.and_then(|s| s.last_tick),
        "last_outcome": state.and_then(|s| s.last_outcome.clone()),
        "fired": fired,
        "skipped": { "total": overlap + missed, "overlap": overlap, "missed": missed },
    })
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
struct ReplayQuery {
    rule: Option<String>,
}

/// Queues an event again for one rule (`?rule=`) or for every rule that ran it: new
/// jobs, linked to the old ones, run by the rules as they are now.
async fn replay_event(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<ReplayQuery>,
) -> Response {
    if let Some(rule) = &q.rule
        && current_rules(&app.rules).get(rule).is_none()
    {
        return error_response(StatusCode::NOT_FOUND, "no such rule");
    }
    let store = app.store.clone();
    let rules = current_rules(&app.rules);
    let result = tokio::task::spawn_blocking(move || {
        store.replay_event(&id, q.rule.as_deref(), &|rule| rules.attempts_of(rule))
    })
    .await;
    match result {
        Ok(Ok(jobs)) if jobs.is_empty() => error_response(
            StatusCode::NOT_FOUND,
            "no such event, or no job of it to replay",
        ),
        Ok(Ok(jobs)) => {
            app.wake.notify();
            (StatusCode::ACCEPTED, Json(json!({ "jobs": jobs }))).into_response()
        }
        _ => error_response(StatusCode::SERVICE_UNAVAILABLE, "the store does not answer"),
    }
}

/// Queues every dead letter of a rule again.
async fn replay_dead(State(app): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    let Some(attempts) = current_rules(&app.rules)
        .get(&name)
        .map(|r| r.retry.attempts)
    else {
        return error_response(StatusCode::NOT_FOUND, "no such rule");
    };
    let store = app.store.clone();
    let result =
        tokio::task::spawn_blocking(move || store.replay_dead(&name, 1000, attempts)).await;
    match result {
        Ok(Ok(jobs)) => {
            if !jobs.is_empty() {
                app.wake.notify();
            }
            (StatusCode::ACCEPTED, Json(json!({ "jobs": jobs }))).into_response()
        }
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
    const STATUSES: &[&str] = &["succeeded", "skipped", "failed"];
    if let Some(status) = &q.status
        && !STATUSES.contains(&status.as_str())
    {
        return error_response(
            StatusCode::BAD_REQUEST,
            format!("expected status to be succeeded, skipped or failed, found {status:?}"),
        );
    }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::rules::{CatchUp, Overlap};
    use crate::triggers::cron::{Cron, Schedule};

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn schedule_status_shows_the_next_tick_and_skipped_ticks_by_reason() {
        let trigger = ScheduleTrigger {
            schedule: Schedule::new(
                Cron::parse("30 2 * * *").unwrap(),
                chrono_tz::Tz::America__Denver,
            ),
            overlap: Overlap::Skip,
            catch_up: CatchUp::Latest,
        };
        let state = ScheduleState {
            rule: "nightly".into(),
            handled_through: utc("2024-05-01T08:30:00Z"),
            last_tick: Some(utc("2024-05-01T08:30:00Z")),
            last_outcome: Some("overlap".into()),
            fired: 7,
            skipped_overlap: 2,
            skipped_missed: 3,
        };
        let status = schedule_status(&trigger, Some(&state), utc("2024-05-01T12:00:00Z"));
        assert_eq!(status["next"], "2024-05-02T08:30:00Z");
        assert_eq!(status["next_local"], "2024-05-02T02:30:00-06:00");
        assert_eq!(status["overlap"], "skip");
        assert_eq!(status["catch_up"], "latest");
        assert_eq!(status["fired"], 7);
        assert_eq!(status["last_outcome"], "overlap");
        assert_eq!(
            status["skipped"],
            json!({"total": 5, "overlap": 2, "missed": 3})
        );
        let fresh = schedule_status(&trigger, None, utc("2024-05-01T12:00:00Z"));
        assert_eq!(fresh["skipped"]["total"], 0);
        assert_eq!(fresh["last_tick"], serde_json::Value::Null);
    }
}
