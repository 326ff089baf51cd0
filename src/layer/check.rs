//! The check: the layer's shared state (`Checker`) and how it decides a request — from the
//! cache when a fresh answer is at hand, else from the store within the timeout, the breaker and
//! the fail mode deciding what a failure means.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::request::Parts;
use tokio::time::Instant;

use super::breaker::{Breaker, BreakerState};
use super::decision::{budget_headers, Blocked, BudgetDecision, HeaderValues, UnavailableCause};
use super::layer::FailMode;
use super::resolve::ResolveWorkspace;
use super::telemetry::LayerMetrics;
use crate::period::Limits;
use crate::store::{BudgetStatus, BudgetStore, StoreError};
use crate::WorkspaceId;

pub(super) type Exempt = dyn Fn(&Parts) -> bool + Send + Sync;

#[derive(Clone)]
/// What every service of one layer shares: the store, the settings, the breaker. Cheap to
/// clone behind its `Arc`; the builder clones it on write.
pub(crate) struct Checker {
    /// What checks ask, as the layer was given it (a `CachingStore` for a decision cache).
    pub(super) store: Arc<dyn BudgetStore>,
    pub(super) resolver: Arc<dyn ResolveWorkspace>,
    pub(super) exempt: Option<Arc<Exempt>>,
    pub(super) timeout: Duration,
    pub(super) fail_mode: FailMode,
    pub(super) breaker: Arc<Breaker>,
    pub(super) breaker_settings: (u32, Duration),
    pub(super) budget_headers: bool,
    pub(super) warn: Arc<WarnLimiter>,
}

impl Checker {
    /// The check: status within the timeout; on a refusal, the retry-after lookup within a
    /// second timeout (without it the refusal stands, only without `Retry-After`).
    pub(crate) async fn decide(self: Arc<Self>, workspace: WorkspaceId) -> BudgetDecision {
        let started = Instant::now();
        let decision = self.check(workspace, started).await;
        let took = started.elapsed();
        let metrics = LayerMetrics::get();
        metrics.check_duration.record(took.as_secs_f64());
        metrics.record(&decision);
        tracing::debug!(workspace = %decision.workspace(), decision = decision.label(), ?took, "budget check");
        decision
    }

    /// The budget headers for `decision` when it is allowed and they are on.
    pub(crate) fn headers_for(&self, decision: &BudgetDecision) -> HeaderValues {
        match decision {
            BudgetDecision::Allowed { status, .. } => self.headers_for_status(status),
            _ => None,
        }
    }

    /// The budget headers for `status` when it allows requests and they are on.
    fn headers_for_status(&self, status: &BudgetStatus) -> HeaderValues {
        if self.budget_headers && !status.is_exceeded() {
            budget_headers(status)
        } else {
            None
        }
    }

    /// The decision, and its budget headers, when it needs no waiting: a fresh cached status
    /// that allows the request (or an unknown workspace), whatever the breaker's state. `Err`
    /// hands the workspace back for the full check.
    pub(crate) fn decide_from_cache(
        &self,
        workspace: WorkspaceId,
    ) -> Result<(BudgetDecision, HeaderValues), WorkspaceId> {
        let (decision, headers) = match self.store.status_now(&workspace) {
            Some(Ok(status)) if !status.is_exceeded() => (
                BudgetDecision::Allowed { workspace, status },
                self.headers_for_status(&status),
            ),
            Some(Err(StoreError::NotFound)) => (BudgetDecision::Unregistered { workspace }, None),
            _ => return Err(workspace),
        };
        // Not timed: the histogram describes checks that wait for the store.
        LayerMetrics::get().record(&decision);
        Ok((decision, headers))
    }

    async fn check(&self, workspace: WorkspaceId, started: Instant) -> BudgetDecision {
        let status = match self.breaker.permit() {
            // Open breaker: a fresh cached answer (allow or refuse) still stands; the fail mode
            // applies only where there is none.
            None => match self.store.status_now(&workspace) {
                Some(Ok(status)) => status,
                Some(Err(StoreError::NotFound)) => {
                    return BudgetDecision::Unregistered { workspace }
                }
                _ => return self.unavailable(workspace, UnavailableCause::BreakerOpen, None),
            },
            Some(permit) => {
                match tokio::time::timeout_at(started + self.timeout, self.store.status(&workspace))
                    .await
                {
                    Ok(Ok(status)) => {
                        permit.succeeded();
                        status
                    }
                    Ok(Err(StoreError::NotFound)) => {
                        permit.succeeded();
                        return BudgetDecision::Unregistered { workspace };
                    }
                    Ok(Err(e)) => {
                        permit.failed();
                        return self.unavailable(workspace, UnavailableCause::StoreError, Some(&e));
                    }
                    Err(_) => {
                        permit.failed();
                        return self.unavailable(workspace, UnavailableCause::Timeout, None);
                    }
                }
            }
        };
        let exceeded = status.exceeded_periods();
        if exceeded.is_empty() {
            return BudgetDecision::Allowed { workspace, status };
        }
        let over = exceeded
            .iter()
            .fold(Limits::none(), |l, &p| l.with(p, status.limits.get(p)));
        // With the breaker open only an answer at hand is taken (a zero timeout still polls
        // once); without one the refusal stands, only without `Retry-After`.
        let wait = if self.breaker.state() != BreakerState::Closed {
            Duration::ZERO
        } else {
            self.timeout
        };
        let waits = tokio::time::timeout(wait, self.store.retry_after(&workspace, &over))
            .await
            .ok()
            .and_then(Result::ok);
        BudgetDecision::Blocked(Blocked::new(workspace, status, waits))
    }

    fn unavailable(
        &self,
        workspace: WorkspaceId,
        cause: UnavailableCause,
        error: Option<&StoreError>,
    ) -> BudgetDecision {
        let failed_open = self.fail_mode == FailMode::Open;
        self.warn.warn(cause, &workspace, error, failed_open);
        BudgetDecision::Unavailable {
            workspace,
            cause,
            failed_open,
        }
    }
}

/// Logs at most one warning per cause per interval, with the count of those it held back.
#[derive(Debug)]
pub(super) struct WarnLimiter {
    interval: Duration,
    next: [Mutex<Option<Instant>>; 3],
    held_back: [AtomicU64; 3],
}

impl WarnLimiter {
    pub(super) fn new(interval: Duration) -> Self {
        WarnLimiter {
            interval,
            next: Default::default(),
            held_back: Default::default(),
        }
    }

    fn warn(
        &self,
        cause: UnavailableCause,
        workspace: &WorkspaceId,
        error: Option<&StoreError>,
        failed_open: bool,
    ) -> bool {
        let i = cause.index();
        let now = Instant::now();
        {
            let mut next = self.next[i].lock().unwrap_or_else(|e| e.into_inner());
            if next.is_some_and(|n| now < n) {
                self.held_back[i].fetch_add(1, Ordering::Relaxed);
                return false;
            }
            *next = Some(now + self.interval);
        }
        let held_back = self.held_back[i].swap(0, Ordering::Relaxed);
        let action = if failed_open {
            "let through"
        } else {
            "refused"
        };
        match error {
            Some(e) => {
                tracing::warn!(%workspace, cause = cause.label(), error = %e, held_back, "budget check failed: request {action}")
            }
            None => {
                tracing::warn!(%workspace, cause = cause.label(), held_back, "budget check failed: request {action}")
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn warnings_are_rate_limited_per_cause() {
        let w = WarnLimiter::new(Duration::from_secs(10));
        let ws = WorkspaceId::new("ws-1").unwrap();
        let timeouts = UnavailableCause::Timeout.index();
        assert!(w.warn(UnavailableCause::Timeout, &ws, None, true));
        assert!(
            !w.warn(UnavailableCause::Timeout, &ws, None, true),
            "same cause, same interval"
        );
        assert!(
            w.warn(UnavailableCause::StoreError, &ws, None, true),
            "each cause has its own"
        );
        assert_eq!(w.held_back[timeouts].load(Ordering::Relaxed), 1);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(w.warn(UnavailableCause::Timeout, &ws, None, true));
        assert_eq!(
            w.held_back[timeouts].load(Ordering::Relaxed),
            0,
            "reported and reset"
        );
    }
}
