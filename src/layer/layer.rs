//! The `Layer` and its builder: settings in, a `BudgetService` per wrapped service out.

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use tower_layer::Layer;

use super::breaker::{Breaker, BreakerState};
use super::check::{Checker, WarnLimiter};
use super::resolve::{PathSegment, ResolveWorkspace};
use super::service::BudgetService;
use crate::store::BudgetStore;

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
}

/// Applies budget enforcement to a service: see the [module docs](super).
///
/// The layer asks the store it is given. For a decision cache, give it a [`CachingStore`] and
/// write limits and heartbeats through that same one: its decisions then see the writes at once.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tower_budget::layer::{BudgetLayer, FailMode, Header};
/// use tower_budget::store::{CachingStore, MemoryStore};
///
/// let store = Arc::new(CachingStore::with_defaults(Arc::new(MemoryStore::new())));
/// let layer = BudgetLayer::from_arc(store.clone())
///     .with_resolver(Header::new(http::HeaderName::from_static("x-workspace-id")))
///     .with_check_timeout(Duration::from_millis(30))?
///     .with_fail_mode(FailMode::Closed)
///     .with_budget_headers(true);
/// // Limits, heartbeats and registrations written through `store` are enforced at once.
/// # drop((store, layer));
/// # Ok::<(), tower_budget::layer::ConfigError>(())
/// ```
///
/// [`CachingStore`]: crate::store::CachingStore
#[derive(Clone)]
#[must_use]
pub struct BudgetLayer {
    checker: Arc<Checker>,
}

impl std::fmt::Debug for BudgetLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.checker;
        f.debug_struct("BudgetLayer")
            .field("check_timeout", &s.timeout)
            .field("fail_mode", &s.fail_mode)
            .field("breaker", &s.breaker_settings)
            .field("budget_headers", &s.budget_headers)
            .finish_non_exhaustive()
    }
}

impl BudgetLayer {
    /// Enforces the budgets in `store`, asking it on every request (wrap it in a
    /// [`CachingStore`](crate::store::CachingStore) for a decision cache), with the defaults:
    /// workspace from `/workspaces/{id}/…`, 50 ms check timeout, fail-open, breaker after 5
    /// consecutive failures for 5 s, no budget headers, nothing exempt.
    pub fn new(store: impl BudgetStore) -> Self {
        Self::from_arc(Arc::new(store))
    }

    /// Like [`new`](Self::new), for a store that is already shared.
    pub fn from_arc(store: Arc<dyn BudgetStore>) -> Self {
        let checker = Checker {
            store,
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
        BudgetLayer {
            checker: Arc::new(checker),
        }
    }

    /// Settings change this layer only: a clone (or services it already made) keeps its own.
    fn update(mut self, f: impl FnOnce(&mut Checker)) -> Self {
        f(Arc::make_mut(&mut self.checker));
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

    /// The breaker's current state.
    pub fn breaker_state(&self) -> BreakerState {
        self.checker.breaker.state()
    }
}

impl<S> Layer<S> for BudgetLayer {
    type Service = BudgetService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BudgetService::new(inner, self.checker.clone())
    }
}
