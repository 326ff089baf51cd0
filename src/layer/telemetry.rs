//! The layer's metric handles, resolved once: on the request path a metric is an atomic add,
//! not a registry lookup. They bind to the recorder installed when the first check runs, so
//! install the recorder before serving (as every `metrics` exporter's setup does).

use std::sync::OnceLock;

use metrics::{Counter, Histogram};

use super::decision::{BudgetDecision, UnavailableCause};
use crate::period::PerPeriod;

pub(crate) struct LayerMetrics {
    allowed: Counter,
    unregistered: Counter,
    blocked: Counter,
    failed_open: Counter,
    failed_closed: Counter,
    blocked_by_period: PerPeriod<Counter>,
    failures: [Counter; 3],
    pub(crate) check_duration: Histogram,
}

impl LayerMetrics {
    pub(crate) fn get() -> &'static LayerMetrics {
        static METRICS: OnceLock<LayerMetrics> = OnceLock::new();
        METRICS.get_or_init(|| {
            let decision = |d: &'static str| metrics::counter!("tower_budget_decisions_total", "decision" => d);
            let cause = |c: UnavailableCause| metrics::counter!("tower_budget_store_failures_total", "cause" => c.label());
            LayerMetrics {
                allowed: decision("allowed"),
                unregistered: decision("unregistered"),
                blocked: decision("blocked"),
                failed_open: decision("failed_open"),
                failed_closed: decision("failed_closed"),
                blocked_by_period: PerPeriod::from_fn(|p| metrics::counter!("tower_budget_blocked_total", "period" => p.name())),
                failures: UnavailableCause::ALL.map(cause),
                check_duration: metrics::histogram!("tower_budget_check_duration_seconds"),
            }
        })
    }

    pub(crate) fn record(&self, decision: &BudgetDecision) {
        match decision {
            BudgetDecision::Allowed { .. } => self.allowed.increment(1),
            BudgetDecision::Unregistered { .. } => self.unregistered.increment(1),
            BudgetDecision::Blocked(b) => {
                self.blocked.increment(1);
                for p in &b.exceeded {
                    self.blocked_by_period[*p].increment(1);
                }
            }
            BudgetDecision::Unavailable {
                cause, failed_open, ..
            } => {
                if *failed_open {
                    self.failed_open.increment(1);
                } else {
                    self.failed_closed.increment(1);
                }
                self.failures[cause.index()].increment(1);
            }
        }
    }
}
