//! What the HTTP handlers of `serve` share: the store, the rules in force and the
//! settings that shape an answer.

use std::sync::Arc;
use std::time::Duration;

use crate::store::Store;
use crate::triggers::decode::DecodeLimits;
use crate::worker::{SharedRules, Wake};

/// What the HTTP handlers share.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub ingest: crate::store::ingest::Ingestor,
    pub dedupe_window: Duration,
    pub rules: SharedRules,
    pub wake: Arc<Wake>,
    pub body_limit: usize,
    pub decode_limits: DecodeLimits,
    pub admin_token: Option<String>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub metrics: Arc<crate::admin::metrics::Metrics>,
    /// How long a webhook body may take to arrive.
    pub body_timeout: Duration,
    /// Permits to receive a webhook body: at most this many are read at once.
    pub readers: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}
