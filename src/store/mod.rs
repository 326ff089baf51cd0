//! Budget storage: the [`BudgetStore`] trait (limits and spend) and the [`Registry`] trait
//! (agents and their tokens), the types they speak, and their implementations — [`MemoryStore`]
//! (in-process, the zero-setup default), with the `postgres` feature [`postgres::PgStore`], and
//! [`CachingStore`] in front of either.
//!
//! # The ledger
//!
//! Agents report **cumulative** spend. A heartbeat turns a report into an increment (see
//! `derive_delta`) and appends it to an append-only ledger with the store's timestamp.
//! Each ledger entry also carries the workspace's running total after it, so the spend in any
//! trailing window `(now − w, now]` is a difference of two running totals: the last entry at or
//! before `now` minus the total just before the first entry after `now − w`. That is two index
//! probes per window whatever the ledger's size, and it is exact — no bucket rounding. The same
//! running totals answer "when will enough spend have aged out" for `Retry-After`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::alerts::AlertThresholds;
use crate::period::{exceeded_periods, Limits, LimitsPatch, PerPeriod, Period, Spend};
use crate::WorkspaceId;

mod cache;
mod memory;
mod outbox;
#[cfg(feature = "postgres")]
pub mod postgres;
mod registry;

pub use outbox::{AlertOutbox, PendingAlert, ALERT_MAX_AGE};

pub use cache::refresh::{self, Refresher};
pub use cache::{CachingStore, DEFAULT_CACHE_CAPACITY, DEFAULT_CACHE_TTL, MAX_REFUSAL_AGE};
pub use memory::{MemoryStore, DEFAULT_MAX_ENTRIES_PER_WORKSPACE};
pub use registry::{Registration, Registry, Store, TokenHash};

/// The largest cumulative report accepted: $10 B in cents. Larger reports are clamped to it.
pub const MAX_REPORTED_CENTS: i64 = 1_000_000_000_000;

/// A workspace's budget at one moment: its limits and its spend per trailing window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct BudgetStatus {
    /// The configured limits.
    pub limits: Limits,
    /// Spend in each period's trailing window, in cents.
    pub spend: Spend,
}

/// One period's line of a [`BudgetStatus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PeriodStatus {
    /// The period.
    #[serde(skip)]
    pub period: Period,
    /// The limit in cents, `None` for no limit.
    pub limit: Option<i64>,
    /// Spend in the trailing window, in cents.
    pub spend: i64,
    /// `limit − spend` (negative when over), `None` without a limit.
    pub remaining: Option<i64>,
}

impl PeriodStatus {
    /// `{"limit", "spend", "remaining"}`: the period entry every JSON output starts from (the
    /// budget GET adds the window, the 402 body the wait).
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        }
    }
}

impl BudgetStatus {
    /// One line per period, in table order.
    pub fn periods(&self) -> impl Iterator<Item = PeriodStatus> + '_ {
        Period::all().map(|p| self.period(p))
    }

    /// The line of one period.
    pub fn period(&self, period: Period) -> PeriodStatus {
        let limit = self.limits.get(period);
        let spend = self.spend[period];
        PeriodStatus {
            period,
            limit,
            spend,
            remaining: limit.map(|l| l.saturating_sub(spend)),
        }
    }

    /// The exceeded periods in table order (limit present and `spend >= limit`).
    pub fn exceeded_periods(&self) -> Vec<Period> {
        exceeded_periods(&self.limits, &self.spend)
    }

    /// True when any period is exceeded.
    pub fn is_exceeded(&self) -> bool {
        !self.exceeded_periods().is_empty()
    }
}

/// What the budget GET shows: the status, the alert thresholds and the forecast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetReport {
    /// Limits and spend per period.
    pub status: BudgetStatus,
    /// The workspace's alert thresholds (the default when it set none).
    pub alert_thresholds: AlertThresholds,
    /// Per period with a limit, whole seconds until the limit is reached at the trailing hour's
    /// rate (see [`crate::alerts::exhausted_in_seconds`]); `None` where it is not reached
    /// within the window, the rate is 0, or there is no limit.
    pub exhausted_in_seconds: PerPeriod<Option<u64>>,
    /// Per exceeded period with a limit above 0, how long until enough spend ages out of the
    /// window for the call to pass again (as [`BudgetStore::retry_after`]); `None` elsewhere.
    /// A store must fill it: the budget GET shows `None` as "no wait helps" (a limit of 0).
    pub retry_after: PerPeriod<Option<Duration>>,
}

/// A validated change to a workspace's budget: limits (merge patch) and, optionally, its alert
/// thresholds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BudgetPatch {
    /// The limits to set or clear.
    pub limits: LimitsPatch,
    /// `None` keeps the thresholds, `Some(None)` restores the default, `Some(Some(list))` sets
    /// the list.
    pub alert_thresholds: Option<Option<AlertThresholds>>,
}

impl From<LimitsPatch> for BudgetPatch {
    fn from(limits: LimitsPatch) -> Self {
        BudgetPatch {
            limits,
            alert_thresholds: None,
        }
    }
}

/// A cumulative spend report from an agent, already clamped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The reporting workspace.
    pub workspace: WorkspaceId,
    reported_cents: i64,
    /// The agent's monotonic report counter, if it sends one.
    pub seq: Option<u64>,
}

impl Heartbeat {
    /// A report of `reported_cents` cumulative spend (`None`: nothing to report), clamped to
    /// `[0, MAX_REPORTED_CENTS]`.
    pub fn new(workspace: WorkspaceId, reported_cents: Option<i64>, seq: Option<u64>) -> Self {
        Heartbeat {
            workspace,
            reported_cents: reported_cents.unwrap_or(0).clamp(0, MAX_REPORTED_CENTS),
            seq,
        }
    }

    /// The clamped cumulative report; 0 means nothing to report.
    pub fn reported_cents(&self) -> i64 {
        self.reported_cents
    }
}

/// What a heartbeat did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub struct HeartbeatOutcome {
    /// Cents appended to the ledger (0 when nothing new was spent).
    pub recorded_delta_cents: i64,
    /// True when the report's `seq` was not newer than the last accepted one: nothing changed.
    pub stale: bool,
}

/// The increment a cumulative report adds, given the previous report.
///
/// `reported < previous` means the agent's counter was reset, so everything it reports is new.
/// A report of 0 adds nothing (and, by the stores, never replaces `previous`).
pub(crate) fn derive_delta(previous: i64, reported: i64) -> i64 {
    if reported <= 0 {
        0
    } else if reported < previous {
        reported
    } else {
        reported - previous
    }
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The workspace is not registered, or was removed.
    #[error("workspace not found")]
    NotFound,
    /// The backend failed or timed out (database down, pool exhausted, …).
    #[error("budget store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The stored data cannot take the change (for instance a running total past `i64`).
    #[error("budget store refused the change: {0}")]
    Refused(String),
}

impl StoreError {
    /// Wraps a backend error.
    pub fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Unavailable(Box::new(e))
    }
}

/// Storage of limits and spend for many workspaces: what the [`BudgetLayer`] asks and the budget
/// API writes. The agents' registry and their tokens are the other half, [`Registry`]; a type
/// that implements both is a [`Store`].
///
/// Implementations must make [`record_heartbeat`](Self::record_heartbeat) and
/// [`patch_limits`](Self::patch_limits) atomic per workspace, and
/// [`status`](Self::status) exact over the trailing windows. The crate's conformance suite
/// (`tests/common/conformance.rs`) states the contract as tests; run it against a new store.
///
/// [`BudgetLayer`]: crate::layer::BudgetLayer
#[async_trait]
pub trait BudgetStore: Send + Sync + 'static {
    /// Registers `workspace`, or brings a removed one back. Limits, ledger, previous report and
    /// `seq` of a known workspace are kept.
    async fn register(&self, workspace: &WorkspaceId) -> Result<(), StoreError>;

    /// Marks `workspace` removed: from then on it is [`StoreError::NotFound`] until registered
    /// again. Removing an unknown or removed workspace is `NotFound`.
    async fn remove(&self, workspace: &WorkspaceId) -> Result<(), StoreError>;

    /// The workspace's limits.
    async fn limits(&self, workspace: &WorkspaceId) -> Result<Limits, StoreError>;

    /// Applies `patch` atomically (concurrent patches of different periods both survive),
    /// decides the alert events the limit change causes in the same step (see
    /// [`crate::alerts`]), and returns the report after it, read in the same step: an error
    /// means nothing changed (short of an ambiguous commit, a connection lost while the database
    /// commits). Stored keys this version does not know are kept.
    async fn patch_budget(
        &self,
        workspace: &WorkspaceId,
        patch: &BudgetPatch,
    ) -> Result<BudgetReport, StoreError>;

    /// [`patch_budget`](Self::patch_budget) with limits only; the status after it.
    async fn patch_limits(
        &self,
        workspace: &WorkspaceId,
        patch: &LimitsPatch,
    ) -> Result<BudgetStatus, StoreError> {
        let report = self.patch_budget(workspace, &(*patch).into()).await?;
        Ok(report.status)
    }

    /// Limits and spend per trailing window, now.
    async fn status(&self, workspace: &WorkspaceId) -> Result<BudgetStatus, StoreError>;

    /// Status, alert thresholds and forecast, now, read in one step.
    async fn report(&self, workspace: &WorkspaceId) -> Result<BudgetReport, StoreError>;

    /// The [`status`](Self::status) answer if it is at hand without waiting (a fresh cache
    /// entry), else `None`. The layer serves a request from it without any future, timer or
    /// allocation. Stores that always wait keep the default, `None`.
    fn status_now(&self, workspace: &WorkspaceId) -> Option<Result<BudgetStatus, StoreError>> {
        let _ = workspace;
        None
    }

    /// For each period in `over` whose limit is above 0, how long until enough of the current
    /// spend in its window has aged out for spend to fall below the limit if nothing new is
    /// spent. `None` where no wait helps (a limit of 0, or no limit).
    async fn retry_after(
        &self,
        workspace: &WorkspaceId,
        over: &Limits,
    ) -> Result<PerPeriod<Option<Duration>>, StoreError>;

    /// Turns a cumulative report into a ledger increment, atomically: two concurrent reports
    /// never count the same increment, and a stale `seq` changes nothing. The alert events the
    /// increment causes are decided in the same step.
    async fn record_heartbeat(&self, heartbeat: &Heartbeat)
        -> Result<HeartbeatOutcome, StoreError>;

    /// Spend per bucket: `buckets` consecutive buckets of `step`, the first starting at `from`,
    /// each `[start, start + step)`, exact from the ledger's running totals. Costs one index
    /// probe per bucket edge, whatever the ledger's size. Spend older than
    /// [`Period::retention`] may have been pruned (it then reads as 0).
    async fn spend_history(
        &self,
        workspace: &WorkspaceId,
        step: Duration,
        from: chrono::DateTime<chrono::Utc>,
        buckets: usize,
    ) -> Result<Vec<i64>, StoreError>;

    /// Registered (not removed) workspaces in id order, after `after`, at most `limit`.
    async fn list_workspaces(
        &self,
        after: Option<&WorkspaceId>,
        limit: usize,
    ) -> Result<Vec<WorkspaceId>, StoreError>;

    /// The page [`list_workspaces`](Self::list_workspaces) gives, with each workspace's
    /// [`report`](Self::report). The default asks for each report in turn (a workspace removed
    /// meanwhile is left out); a store behind a network answers a page in one round trip.
    async fn list_reports(
        &self,
        after: Option<&WorkspaceId>,
        limit: usize,
    ) -> Result<Vec<(WorkspaceId, BudgetReport)>, StoreError> {
        let mut page = Vec::new();
        for id in self.list_workspaces(after, limit).await? {
            match self.report(&id).await {
                Ok(report) => page.push((id, report)),
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(page)
    }

    /// Deletes ledger entries older than [`Period::retention`], in small batches, and returns
    /// how many went. Safe to call concurrently with everything else; call it periodically.
    async fn prune(&self) -> Result<u64, StoreError>;
}

#[async_trait]
impl<S: BudgetStore + ?Sized> BudgetStore for Arc<S> {
    async fn register(&self, workspace: &WorkspaceId) -> Result<(), StoreError> {
        (**self).register(workspace).await
    }
    async fn remove(&self, workspace: &WorkspaceId) -> Result<(), StoreError> {
        (**self).remove(workspace).await
    }
    async fn limits(&self, workspace: &WorkspaceId) -> Result<Limits, StoreError> {
        (**self).limits(workspace).await
    }
    async fn patch_budget(
        &self,
        workspace: &WorkspaceId,
        patch: &BudgetPatch,
    ) -> Result<BudgetReport, StoreError> {
        (**self).patch_budget(workspace, patch).await
    }
    async fn patch_limits(
        &self,
        workspace: &WorkspaceId,
        patch: &LimitsPatch,
    ) -> Result<BudgetStatus, StoreError> {
        (**self).patch_limits(workspace, patch).await
    }
    async fn status(&self, workspace: &WorkspaceId) -> Result<BudgetStatus, StoreError> {
        (**self).status(workspace).await
    }
    async fn report(&self, workspace: &WorkspaceId) -> Result<BudgetReport, StoreError> {
        (**self).report(workspace).await
    }
    fn status_now(&self, workspace: &WorkspaceId) -> Option<Result<BudgetStatus, StoreError>> {
        (**self).status_now(workspace)
    }
    async fn retry_after(
        &self,
        workspace: &WorkspaceId,
        over: &Limits,
    ) -> Result<PerPeriod<Option<Duration>>, StoreError> {
        (**self).retry_after(workspace, over).await
    }
    async fn record_heartbeat(
        &self,
        heartbeat: &Heartbeat,
    ) -> Result<HeartbeatOutcome, StoreError> {
        (**self).record_heartbeat(heartbeat).await
    }
    async fn spend_history(
        &self,
        workspace: &WorkspaceId,
        step: Duration,
        from: chrono::DateTime<chrono::Utc>,
        buckets: usize,
    ) -> Result<Vec<i64>, StoreError> {
        (**self).spend_history(workspace, step, from, buckets).await
    }
    async fn list_workspaces(
        &self,
        after: Option<&WorkspaceId>,
        limit: usize,
    ) -> Result<Vec<WorkspaceId>, StoreError> {
        (**self).list_workspaces(after, limit).await
    }
    async fn list_reports(
        &self,
        after: Option<&WorkspaceId>,
        limit: usize,
    ) -> Result<Vec<(WorkspaceId, BudgetReport)>, StoreError> {
        (**self).list_reports(after, limit).await
    }
    async fn prune(&self) -> Result<u64, StoreError> {
        (**self).prune().await
    }
}

/// Runs [`BudgetStore::prune`] every `every` until the returned handle is aborted or dropped
/// with the runtime. Failures are logged and retried at the next tick.
pub fn spawn_pruner<S: BudgetStore + ?Sized>(
    store: Arc<S>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match store.prune().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(pruned = n, "pruned old ledger entries"),
                Err(e) => tracing::warn!(error = %e, "ledger prune failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_rule() {
        // (previous, reported, delta)
        for (prev, rep, want) in [
            (0, 0, 0),
            (0, 100, 100),
            (100, 150, 50),
            (150, 150, 0),
            (150, 40, 40), // reset: the agent's counter started over
            (150, 0, 0),   // 0 = nothing to report
            (0, MAX_REPORTED_CENTS, MAX_REPORTED_CENTS),
        ] {
            assert_eq!(derive_delta(prev, rep), want, "prev {prev} reported {rep}");
        }
    }

    #[test]
    fn heartbeat_clamps() {
        let ws = WorkspaceId::new("w").unwrap();
        assert_eq!(
            Heartbeat::new(ws.clone(), Some(-5), None).reported_cents(),
            0
        );
        assert_eq!(Heartbeat::new(ws.clone(), None, None).reported_cents(), 0);
        assert_eq!(
            Heartbeat::new(ws.clone(), Some(i64::MAX), None).reported_cents(),
            MAX_REPORTED_CENTS
        );
        assert_eq!(Heartbeat::new(ws, Some(42), Some(1)).reported_cents(), 42);
    }

    #[test]
    fn status_lines() {
        let status = BudgetStatus {
            limits: Limits::none().with(Period::HOURLY, Some(100)),
            spend: Spend::from_fn(|_| 130),
        };
        let hourly = status.period(Period::HOURLY);
        assert_eq!(
            (hourly.limit, hourly.spend, hourly.remaining),
            (Some(100), 130, Some(-30))
        );
        assert_eq!(status.period(Period::DAILY).remaining, None);
        assert_eq!(status.exceeded_periods(), [Period::HOURLY]);
        assert_eq!(status.periods().count(), Period::all().len());
    }
}
