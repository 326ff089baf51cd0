use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::request::Parts;
use tokio::time::Instant;
use tower_layer::Layer;

use super::breaker::{Breaker, BreakerState};
use super::decision::{render_budget_headers, Blocked, BudgetDecision, Rendered, UnavailableCause};
use super::front;
use super::resolve::{PathSegment, ResolveWorkspace};
use super::service::BudgetService;
use super::telemetry::LayerMetrics;
use crate::period::Limits;
use crate::store::{
    BudgetStatus, BudgetStore, CachingStore, StoreError, DEFAULT_CACHE_CAPACITY, DEFAULT_CACHE_TTL,
};
use crate::WorkspaceId;

/// Default bound on one budget check.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_millis(50);
/// Default consecutive store failures that open the breaker.
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 5;
/// Default time the breaker stays open before it lets one probe through.
pub const DEFAULT_BREAKER_COOL_DOWN: Duration = Duration::from_secs(5);
/// Default least time between two warnings of the same cause.
pub const DEFAULT_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// What to do when the store cannot answer in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailMode {
    /// Let the request through (the default): a budget outage never blocks legitimate traffic.
    #[default]
    Open,
    /// Refuse with `503 Service Unavailable` and a JSON body.
    Closed,
}

/// A builder setting was out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The check timeout must be above zero.
    #[error("check timeout must be greater than zero")]
    ZeroTimeout,
    /// The cache capacity must be above zero (turn the cache off with a zero TTL instead).
    #[error("cache capacity must be greater than zero")]
    ZeroCapacity,
}

type Exempt = dyn Fn(&Parts) -> bool + Send + Sync;

/// Applies budget enforcement to a service: see the [module docs](super).
#[derive(Clone)]
#[must_use]
pub struct BudgetLayer {
    shared: Arc<Shared>,
}

#[derive(Clone)]
pub(crate) struct Shared {
    /// What checks ask: the caching store, or `raw` when the cache is off.
    store: Arc<dyn BudgetStore>,
    /// The caching store, when the cache is on (the same one as `store`).
    cache: Option<Arc<CachingStore<dyn BudgetStore>>>,
    raw: Arc<dyn BudgetStore>,
    /// What [`BudgetLayer::store`] hands out for writes and registration lookups: the caching
    /// store, or with the cache off one with a zero TTL — every answer comes from the store, but
    /// concurrent lookups are coalesced and the last known registration is kept (and dropped by
    /// the writes that change it).
    writes: Arc<dyn BudgetStore>,
    cache_ttl: Duration,
    cache_capacity: usize,
    pub(crate) resolver: Arc<dyn ResolveWorkspace>,
    pub(crate) exempt: Option<Arc<Exempt>>,
    timeout: Duration,
    fail_mode: FailMode,
    breaker: Arc<Breaker>,
    breaker_settings: (u32, Duration),
    pub(crate) budget_headers: bool,
    warn: Arc<WarnLimiter>,
}

impl std::fmt::Debug for BudgetLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.shared;
        f.debug_struct("BudgetLayer")
            .field("check_timeout", &s.timeout)
            .field("fail_mode", &s.fail_mode)
            .field("cache_ttl", &s.cache_ttl)
            .field("cache_capacity", &s.cache_capacity)
            .field("breaker", &s.breaker_settings)
            .field("budget_headers", &s.budget_headers)
            .finish_non_exhaustive()
    }
}

impl BudgetLayer {
    /// Enforces the budgets in `store`, with the defaults: workspace from `/workspaces/{id}/…`,
    /// 50 ms check timeout, fail-open, 1 s decision cache for 10,000 workspaces, breaker after 5
    /// consecutive failures for 5 s, no budget headers, nothing exempt.
    pub fn new(store: impl BudgetStore) -> Self {
        Self::from_arc(Arc::new(store))
    }

    /// Like [`new`](Self::new), for a store that is already shared.
    pub fn from_arc(store: Arc<dyn BudgetStore>) -> Self {
        let mut shared = Shared {
            store: store.clone(),
            cache: None,
            writes: store.clone(),
            raw: store,
            cache_ttl: DEFAULT_CACHE_TTL,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            resolver: Arc::new(PathSegment::default()),
            exempt: None,
            timeout: DEFAULT_CHECK_TIMEOUT,
            fail_mode: FailMode::Open,
            breaker: Arc::new(Breaker::new(
                DEFAULT_BREAKER_THRESHOLD,
                DEFAULT_BREAKER_COOL_DOWN,
            )),
            breaker_settings: (DEFAULT_BREAKER_THRESHOLD, DEFAULT_BREAKER_COOL_DOWN),
            budget_headers: false,
            warn: Arc::new(WarnLimiter::new(DEFAULT_WARN_INTERVAL)),
        };
        shared.rebuild_cache();
        BudgetLayer {
            shared: Arc::new(shared),
        }
    }

    fn update(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        f(Arc::make_mut(&mut self.shared));
        self
    }

    /// How the workspace is found in a request.
    pub fn with_resolver(self, resolver: impl ResolveWorkspace) -> Self {
        self.update(|s| s.resolver = Arc::new(resolver))
    }

    /// The longest a check may take before the fail mode applies (default 50 ms).
    ///
    /// # Errors
    /// [`ConfigError::ZeroTimeout`] for zero.
    pub fn with_check_timeout(self, timeout: Duration) -> Result<Self, ConfigError> {
        if timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        Ok(self.update(|s| s.timeout = timeout))
    }

    /// Fail open (default) or closed when the store cannot answer.
    pub fn with_fail_mode(self, mode: FailMode) -> Self {
        self.update(|s| s.fail_mode = mode)
    }

    /// How long a decision is served from the cache (default 1 s; zero turns the cache off).
    pub fn with_cache_ttl(self, ttl: Duration) -> Self {
        self.update(|s| {
            s.cache_ttl = ttl;
            s.rebuild_cache();
        })
    }

    /// How many workspaces the cache holds at most (default 10,000).
    ///
    /// # Errors
    /// [`ConfigError::ZeroCapacity`] for zero.
    pub fn with_cache_capacity(self, capacity: usize) -> Result<Self, ConfigError> {
        if capacity == 0 {
            return Err(ConfigError::ZeroCapacity);
        }
        Ok(self.update(|s| {
            s.cache_capacity = capacity;
            s.rebuild_cache();
        }))
    }

    /// Opens the breaker after `threshold` consecutive failures (0 turns it off), for
    /// `cool_down`; then one probe decides whether it closes.
    pub fn with_breaker(self, threshold: u32, cool_down: Duration) -> Self {
        self.update(|s| {
            s.breaker = Arc::new(Breaker::new(threshold, cool_down));
            s.breaker_settings = (threshold, cool_down);
        })
    }

    /// Adds `RateLimit-Policy` and `RateLimit` headers to allowed responses (default off).
    pub fn with_budget_headers(self, enabled: bool) -> Self {
        self.update(|s| s.budget_headers = enabled)
    }

    /// Requests for which `exempt` returns true pass through unchecked (for instance agent-card
    /// discovery).
    pub fn with_exempt(self, exempt: impl Fn(&Parts) -> bool + Send + Sync + 'static) -> Self {
        self.update(|s| s.exempt = Some(Arc::new(exempt)))
    }

    /// The least time between two warnings of the same cause (default 10 s); the warnings in
    /// between are counted and the count is logged with the next one.
    pub fn with_warn_interval(self, interval: Duration) -> Self {
        self.update(|s| s.warn = Arc::new(WarnLimiter::new(interval)))
    }

    /// The store to write through (budget API, heartbeats) so that this layer sees the writes
    /// at once: the caching store when the cache is on (with the cache off, one that caches
    /// nothing but the last known registration). Take it after configuring the cache.
    pub fn store(&self) -> Arc<dyn BudgetStore> {
        self.shared.writes.clone()
    }

    /// The breaker's current state.
    pub fn breaker_state(&self) -> BreakerState {
        self.shared.breaker.state()
    }
}

impl<S> Layer<S> for BudgetLayer {
    type Service = BudgetService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BudgetService::new(inner, self.shared.clone())
    }
}

impl Shared {
    fn rebuild_cache(&mut self) {
        self.cache = (!self.cache_ttl.is_zero()).then(|| {
            Arc::new(CachingStore::new(
                self.raw.clone(),
                self.cache_ttl,
                self.cache_capacity,
            ))
        });
        (self.store, self.writes) = match &self.cache {
            Some(cache) => (
                cache.clone() as Arc<dyn BudgetStore>,
                cache.clone() as Arc<dyn BudgetStore>,
            ),
            None => (
                self.raw.clone(),
                Arc::new(CachingStore::new(
                    self.raw.clone(),
                    Duration::ZERO,
                    self.cache_capacity,
                )) as Arc<dyn BudgetStore>,
            ),
        };
    }

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
    pub(crate) fn headers_for(&self, decision: &BudgetDecision) -> Rendered {
        match decision {
            BudgetDecision::Allowed { status, .. } => self.headers_for_status(status),
            _ => None,
        }
    }

    /// The budget headers for `status` when it allows requests and they are on.
    fn headers_for_status(&self, status: &BudgetStatus) -> Rendered {
        if self.budget_headers && !status.is_exceeded() {
            render_budget_headers(status)
        } else {
            None
        }
    }

    /// The decision, and its budget headers, when it needs no waiting: a fresh cached status
    /// that allows the request (or an unknown workspace), whatever the breaker's state. `Err`
    /// hands the workspace back for the full check.
    pub(crate) fn decide_now(
        &self,
        workspace: WorkspaceId,
    ) -> Result<(BudgetDecision, Rendered), WorkspaceId> {
        let cached = match &self.cache {
            Some(cache) => front::cached_status(cache, &workspace, self.budget_headers),
            // No cache of ours: the store may still have an answer at hand.
            None => match self.store.status_now(&workspace) {
                Some(Ok(status)) => Some((Some(status), self.headers_for_status(&status))),
                Some(Err(StoreError::NotFound)) => Some((None, None)),
                _ => None,
            },
        };
        let Some((status, headers)) = cached else {
            return Err(workspace);
        };
        let decision = match status {
            Some(status) if !status.is_exceeded() => BudgetDecision::Allowed { workspace, status },
            None => BudgetDecision::Unregistered { workspace },
            Some(_) => return Err(workspace),
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
struct WarnLimiter {
    interval: Duration,
    next: [Mutex<Option<Instant>>; 3],
    held_back: [AtomicU64; 3],
}

impl WarnLimiter {
    fn new(interval: Duration) -> Self {
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
