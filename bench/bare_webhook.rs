//! The yardstick of the ingest benchmark: an axum handler that reads a webhook body and
//! answers 202 the way `clientrules serve` does, without storing anything. Whatever the
//! service takes beyond this is the price of durability.
//!
//! `cargo run --release --example bare-webhook -- 127.0.0.1:8181`

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;

async fn accept(body: Bytes) -> impl IntoResponse {
    // Read like the service reads: the body must be JSON.
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(_) => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({
                "event_id": uuid::Uuid::now_v7().to_string(),
                "duplicate": false,
            })),
        )
            .into_response(),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8181".to_owned());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("bare webhook handler listening on {listen}");
    let app = Router::new().route("/hooks/{*rest}", post(accept));
    axum::serve(listener, app).await?;
    Ok(())
}
