//! Prometheus metrics: deliveries by answer, verification failures by reason, runs by
//! status, served at `/metrics` in the text format.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleStatus {
    rule: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleReason {
    rule: String,
    reason: String,
}

/// The service's counters.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    deliveries: Family<RuleStatus, Counter>,
    rejections: Family<RuleReason, Counter>,
    runs: Family<RuleStatus, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("clientrules");
        let deliveries = Family::<RuleStatus, Counter>::default();
        let rejections = Family::<RuleReason, Counter>::default();
        let runs = Family::<RuleStatus, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries by rule and answer",
            deliveries.clone(),
        );
        registry.register(
            "webhook_rejections",
            "Deliveries that failed verification, by rule and reason",
            rejections.clone(),
        );
        registry.register("runs", "Rule runs by rule and status", runs.clone());
        Metrics {
            registry: Mutex::new(registry),
            deliveries,
            rejections,
            runs,
        }
    }
}

impl Metrics {
    pub fn delivery(&self, rule: &str, status: u16) {
        self.deliveries
            .get_or_create(&RuleStatus {
                rule: rule.to_owned(),
                status: status.to_string(),
            })
            .inc();
    }

    pub fn rejected(&self, rule: &str, reason: &str) {
        self.rejections
            .get_or_create(&RuleReason {
                rule: rule.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn run(&self, rule: &str, status: &str) {
        self.runs
            .get_or_create(&RuleStatus {
                rule: rule.to_owned(),
                status: status.to_owned(),
            })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_in_the_text_format() {
        let m = Metrics::default();
        m.rejected("lead", "signature");
        m.rejected("lead", "signature");
        m.run("lead", "succeeded");
        let text = m.render();
        assert!(
            text.contains(
                r#"clientrules_webhook_rejections_total{rule="lead",reason="signature"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"clientrules_runs_total{rule="lead",status="succeeded"} 1"#),
            "{text}"
        );
    }
}
