//! A caching [`BudgetStore`] wrapper for the request path: decisions, registrations and the last
//! known registration, with a per-thread front (`front`) for the hot status lookup.

mod front;
pub mod refresh;
mod tokens;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use metrics::Counter;
use tokio::time::Instant;

use super::{
    AlertOutbox, BudgetPatch, BudgetReport, BudgetStatus, BudgetStore, Heartbeat, HeartbeatOutcome,
    PendingAlert, Registration, Registry, StoreError, TokenHash,
};
use crate::period::{Limits, LimitsPatch, PerPeriod};
use crate::WorkspaceId;

/// The cache's counters (`tower_budget_cache_total{result}`), resolved once: on the request path a
/// metric is an atomic add, not a registry lookup.
struct CacheMetrics {
    hit: Counter,
    miss: Counter,
    coalesced: Counter,
    /// Statuses read again ahead of their expiry (`refresh`): store reads that are not misses.
    refreshed: Counter,
}

impl CacheMetrics {
    fn get() -> &'static CacheMetrics {
        static METRICS: OnceLock<CacheMetrics> = OnceLock::new();
        METRICS.get_or_init(|| CacheMetrics {
            hit: metrics::counter!("tower_budget_cache_total", "result" => "hit"),
            miss: metrics::counter!("tower_budget_cache_total", "result" => "miss"),
            coalesced: metrics::counter!("tower_budget_cache_total", "result" => "coalesced"),
            refreshed: metrics::counter!("tower_budget_cache_total", "result" => "refreshed"),
        })
    }
}

/// Default time a cached answer is served.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(1);
/// Default bound on cached workspaces.
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

/// In-flight loads older than this are not joined: a new one starts, so one hung store call
/// cannot hold a workspace's checks for long, whatever the TTL.
const MAX_JOIN_AGE: Duration = Duration::from_secs(1);

/// The longest a refusal (an exceeded status) is served, whatever the TTL: spend ages out of the
/// trailing windows without any write, so no change notification says when a workspace is let
/// through again.
pub const MAX_REFUSAL_AGE: Duration = Duration::from_secs(1);

/// How long a cached answer may be served under a TTL.
trait MaxAge {
    /// Registrations are served under the registration TTL
    /// ([`CachingStore::set_registration_ttl`]), everything else under the decision TTL.
    const REGISTRATION: bool = false;

    fn max_age(&self, ttl: Duration) -> Duration {
        ttl
    }
}

impl MaxAge for BudgetStatus {
    fn max_age(&self, ttl: Duration) -> Duration {
        if self.is_exceeded() {
            ttl.min(MAX_REFUSAL_AGE)
        } else {
            ttl
        }
    }
}

impl MaxAge for Registration {
    const REGISTRATION: bool = true;
}
impl MaxAge for (Limits, PerPeriod<Option<Duration>>) {}

type Load<T> = Shared<BoxFuture<'static, Result<T, Arc<StoreError>>>>;

struct Slot<T> {
    load: Load<T>,
    started: Instant,
    state: Arc<SlotState>,
}

/// What copies of a cache entry held elsewhere (the per-thread front, a load in flight, the
/// refresher) share with it, without taking the map's lock.
struct SlotState {
    /// True while the slot is the workspace's entry: cleared when it leaves the map (replaced,
    /// invalidated, evicted), so a copy can tell it is stale.
    current: AtomicBool,
    /// Set when the entry is served from cache: the refresher reads again only the entries
    /// something asked for since they were loaded.
    used: AtomicBool,
}

impl SlotState {
    fn new() -> Arc<Self> {
        Arc::new(SlotState {
            current: AtomicBool::new(true),
            used: AtomicBool::new(false),
        })
    }

    fn is_current(&self) -> bool {
        self.current.load(Ordering::Acquire)
    }

    /// Marks the entry used; a load first, so a hot entry's cache line is written once per
    /// load, not on every hit.
    fn touch(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }
}

impl<T> Drop for Slot<T> {
    fn drop(&mut self) {
        self.state.current.store(false, Ordering::Release);
    }
}

/// A fresh, completed status entry as [`CachingStore::peek_status`] hands it to the front.
struct FreshStatus {
    /// The status, or `None` for a workspace the store does not know.
    status: Option<BudgetStatus>,
    /// When it was loaded: it is served until the TTL (which may change) has run from then.
    started: Instant,
    /// Its `current` flag is cleared when the entry is invalidated or replaced before it
    /// expires.
    state: Arc<SlotState>,
}

/// Answers [`status`](BudgetStore::status), [`retry_after`](BudgetStore::retry_after) and
/// [`registration`](Registry::registration) from memory for up to a TTL, and is itself a
/// [`BudgetStore`] and a [`Registry`]. Token lookups are cached only while a change feed keeps
/// the cache in step ([`set_token_caching`](Self::set_token_caching); the Postgres
/// [`ChangeListener`](crate::store::postgres::ChangeListener) turns it on while connected), so a
/// rotated token stops working at once.
///
/// - Concurrent misses for one workspace share one call to the inner store. A caller that gives
///   up (a timed-out check) does not waste it: the next request picks it up where it stopped.
/// - "Unknown workspace" is cached like an answer; store errors are not.
/// - Writes through this store (limits, heartbeats, register, remove) drop the workspace's entries
///   as soon as the inner write returns, so this process sees its own writes at once. Writes made
///   by other processes are seen within one TTL, or at once with a change feed calling
///   [`invalidate`](Self::invalidate), [`invalidate_budget`](Self::invalidate_budget) and
///   [`clear`](Self::clear) (the Postgres store's listener does).
/// - At most `capacity` workspaces are held; beyond that, expired entries go first, then an
///   arbitrary one.
///
/// Give the same one to the [`BudgetLayer`](crate::layer::BudgetLayer) and to whatever writes
/// (the budget API, heartbeats), so that the layer's decisions see those writes at once:
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tower_budget::period::{LimitsPatch, Period};
/// use tower_budget::store::{BudgetStore, CachingStore, MemoryStore};
/// use tower_budget::WorkspaceId;
///
/// let cache = CachingStore::new(Arc::new(MemoryStore::new()), Duration::from_secs(1), 1_000);
/// let ws = WorkspaceId::new("ws-1")?;
/// cache.register(&ws).await?;
/// assert!(cache.status(&ws).await?.limits.is_empty()); // loaded, now cached
/// cache.patch_limits(&ws, &LimitsPatch::new().with(Period::DAILY, Some(0))?).await?;
/// assert!(cache.status(&ws).await?.is_exceeded(), "the write dropped the cached answer");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct CachingStore<S: ?Sized> {
    /// Unique per cache in this process, so copies of its entries kept elsewhere can name it.
    id: u64,
    inner: Arc<S>,
    /// The TTL in nanoseconds: a change feed lengthens it while it is connected.
    ttl_nanos: AtomicU64,
    /// The registration TTL in nanoseconds, or [`FOLLOW_TTL`].
    registration_ttl_nanos: AtomicU64,
    capacity: usize,
    status: RwLock<Entries<BudgetStatus>>,
    retry: RwLock<Entries<(Limits, PerPeriod<Option<Duration>>)>>,
    registration: RwLock<Entries<Registration>>,
    /// The last registration the inner store gave per workspace, for when it cannot answer in
    /// time; dropped by the writes that change it and when the store says "unknown".
    last_known: Arc<LastKnown>,
    tokens: tokens::Tokens,
}

/// The last registration per workspace, bounded. Recorded when a load completes — if the
/// load's cache entry is still the workspace's entry (`current`), so a lookup that raced a
/// DELETE or a move cannot bring the old URL back: every write that changes a registration
/// first drops the entry (under the map's write lock, which clears `current`) and then takes
/// this map's lock. Lock order: a cache map's lock is never taken while this one is held.
struct LastKnown {
    map: RwLock<HashMap<WorkspaceId, Registration, foldhash::fast::RandomState>>,
    capacity: usize,
}

impl LastKnown {
    /// Records a load's answer, unless its cache entry was dropped since it started.
    fn record(
        &self,
        workspace: &WorkspaceId,
        answer: &Result<Registration, StoreError>,
        entry: &SlotState,
    ) {
        let mut map = write_lock(&self.map);
        if !entry.is_current() {
            return;
        }
        match answer {
            Ok(registration) => self.insert(&mut map, workspace, registration),
            Err(StoreError::NotFound) => {
                map.remove(workspace);
            }
            Err(_) => {}
        }
    }

    /// A registration write: what loads in flight bring back is stale; `now` is the new value
    /// when the write said what it is.
    fn replace(&self, workspace: &WorkspaceId, now: Option<&Registration>) {
        let mut map = write_lock(&self.map);
        match now {
            Some(registration) => self.insert(&mut map, workspace, registration),
            None => {
                map.remove(workspace);
            }
        }
    }

    /// Forgets everything (the cache's entries were dropped first, so loads in flight do not
    /// record their answers).
    fn clear(&self) {
        write_lock(&self.map).clear();
    }

    fn insert(
        &self,
        map: &mut HashMap<WorkspaceId, Registration, foldhash::fast::RandomState>,
        workspace: &WorkspaceId,
        registration: &Registration,
    ) {
        if map.len() >= self.capacity && !map.contains_key(workspace) {
            // Bounded like the cache: an arbitrary entry goes.
            if let Some(victim) = map.keys().next().cloned() {
                map.remove(&victim);
            }
        }
        map.insert(workspace.clone(), registration.clone());
    }
}

struct Entries<T> {
    // Seeded per map: workspace ids come from requests, so the hash must not be predictable.
    map: HashMap<WorkspaceId, Slot<T>, foldhash::fast::RandomState>,
    next_sweep: Instant,
}

impl<T> Default for Entries<T> {
    fn default() -> Self {
        Entries {
            map: HashMap::default(),
            next_sweep: Instant::now(),
        }
    }
}

impl<S: ?Sized> std::fmt::Debug for CachingStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachingStore")
            .field(
                "ttl",
                &Duration::from_nanos(self.ttl_nanos.load(Ordering::Relaxed)),
            )
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl<S: ?Sized> CachingStore<S> {
    /// Caches `inner`'s answers for `ttl`, for at most `capacity` workspaces.
    pub fn new(inner: Arc<S>, ttl: Duration, capacity: usize) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        CachingStore {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            inner,
            ttl_nanos: AtomicU64::new(nanos(ttl)),
            registration_ttl_nanos: AtomicU64::new(FOLLOW_TTL),
            capacity: capacity.max(1),
            status: RwLock::default(),
            retry: RwLock::default(),
            registration: RwLock::default(),
            last_known: Arc::new(LastKnown {
                map: RwLock::default(),
                capacity: capacity.max(1),
            }),
            tokens: tokens::Tokens::default(),
        }
    }

    /// Caches `inner`'s answers for [`DEFAULT_CACHE_TTL`] (1 s), for at most
    /// [`DEFAULT_CACHE_CAPACITY`] (10,000) workspaces.
    pub fn with_defaults(inner: Arc<S>) -> Self {
        Self::new(inner, DEFAULT_CACHE_TTL, DEFAULT_CACHE_CAPACITY)
    }

    /// How long an answer is served.
    pub fn ttl(&self) -> Duration {
        Duration::from_nanos(self.ttl_nanos.load(Ordering::Relaxed))
    }

    /// The bound on cached workspaces.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Serves answers for `ttl` from now on, entries already cached included (they keep the
    /// time they were loaded).
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl_nanos.store(nanos(ttl), Ordering::Relaxed);
    }

    /// How long a registration (agent URL, token hash) is served: the decision TTL unless
    /// [`set_registration_ttl`](Self::set_registration_ttl) said otherwise.
    pub fn registration_ttl(&self) -> Duration {
        match self.registration_ttl_nanos.load(Ordering::Relaxed) {
            FOLLOW_TTL => self.ttl(),
            n => Duration::from_nanos(n),
        }
    }

    /// Serves registrations for `ttl` from now on (`None`: the decision TTL). Registrations
    /// change far less often than spend and every change is a write, so with a change feed
    /// that drops them (the Postgres listener sets 10x the decision TTL while connected) they
    /// can live longer: with many active workspaces that halves the lookups a TTL expiry costs.
    pub fn set_registration_ttl(&self, ttl: Option<Duration>) {
        let n = ttl.map_or(FOLLOW_TTL, |t| nanos(t).min(FOLLOW_TTL - 1));
        self.registration_ttl_nanos.store(n, Ordering::Relaxed);
    }

    fn ttl_for<T: MaxAge>(&self) -> Duration {
        if T::REGISTRATION {
            self.registration_ttl()
        } else {
            self.ttl()
        }
    }

    /// Caches token lookups (off by default). Turn it on only while something calls
    /// [`invalidate`](Self::invalidate) for every registration change made by any process — the
    /// Postgres [`ChangeListener`](crate::store::postgres::ChangeListener) does, and turns it off
    /// while it is disconnected. Off drops every token entry.
    pub fn set_token_caching(&self, on: bool) {
        self.tokens.set_on(on);
    }

    /// Drops `workspace`'s cached budget answers (status, retry-after): its limits or spend
    /// changed. Its registration, token and last known registration stay.
    pub fn invalidate_budget(&self, workspace: &WorkspaceId) {
        write_lock(&self.status).map.remove(workspace);
        write_lock(&self.retry).map.remove(workspace);
    }

    /// Drops everything cached, last known registrations and tokens included: for a change feed
    /// that may have missed changes (a reconnect).
    pub fn clear(&self) {
        *write_lock(&self.status) = Entries::default();
        *write_lock(&self.retry) = Entries::default();
        *write_lock(&self.registration) = Entries::default();
        self.last_known.clear();
        self.tokens.clear();
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    /// Drops everything cached for `workspace`, the last known registration and its token
    /// included: its registration changed.
    pub fn invalidate(&self, workspace: &WorkspaceId) {
        self.drop_answers(workspace);
        self.last_known.replace(workspace, None);
        self.tokens.forget(workspace);
    }

    /// Drops the cached answers for `workspace`; the last known registration stays (it is what
    /// the proxy falls back on while the store is down, and only a registration or removal
    /// changes it).
    fn drop_answers(&self, workspace: &WorkspaceId) {
        write_lock(&self.status).map.remove(workspace);
        write_lock(&self.retry).map.remove(workspace);
        write_lock(&self.registration).map.remove(workspace);
    }

    /// A fresh, completed answer for `workspace`, under a shared lock: the hit path takes no
    /// exclusive lock and clones no future.
    fn cached<T: Clone + MaxAge>(
        &self,
        entries: &RwLock<Entries<T>>,
        workspace: &WorkspaceId,
    ) -> Option<Result<T, StoreError>> {
        self.peek(entries, workspace, |answer, _| answer.cloned())
    }

    /// Like `cached`, for the status, with what a copy held outside the lock needs to know
    /// when to stop serving it.
    fn peek_status(&self, workspace: &WorkspaceId) -> Option<FreshStatus> {
        self.peek(&self.status, workspace, |answer, slot| FreshStatus {
            status: answer.ok().copied(),
            started: slot.started,
            state: slot.state.clone(),
        })
    }

    /// `f` of a fresh, completed entry (its answer: a value or `NotFound`), counted as a hit.
    fn peek<T: MaxAge, R>(
        &self,
        entries: &RwLock<Entries<T>>,
        workspace: &WorkspaceId,
        f: impl FnOnce(Result<&T, StoreError>, &Slot<T>) -> R,
    ) -> Option<R> {
        let now = Instant::now();
        let entries = read_lock(entries);
        let slot = entries.map.get(workspace)?;
        let answer = match slot.load.peek()? {
            Ok(v) => Ok(v),
            Err(e) if matches!(**e, StoreError::NotFound) => Err(StoreError::NotFound),
            Err(_) => return None,
        };
        if !self.fresh(&answer, slot.started, now) {
            return None;
        }
        slot.state.touch();
        CacheMetrics::get().hit.increment(1);
        Some(f(answer, slot))
    }

    /// Whether an answer loaded at `started` may still be served at `now`.
    fn fresh<T: MaxAge>(
        &self,
        answer: &Result<&T, StoreError>,
        started: Instant,
        now: Instant,
    ) -> bool {
        let ttl = self.ttl_for::<T>();
        let max_age = match answer {
            Ok(v) => v.max_age(ttl),
            Err(_) => ttl,
        };
        now < started + max_age
    }

    /// A fresh cached answer for `workspace`, or the shared load of one: joined when in flight,
    /// else started with `fetch` (given the inner store and the workspace).
    async fn get<T, F, Fut>(
        &self,
        entries: &RwLock<Entries<T>>,
        workspace: &WorkspaceId,
        fetch: F,
    ) -> Result<T, StoreError>
    where
        T: Clone + MaxAge + Send + Sync + 'static,
        F: FnOnce(Arc<S>, WorkspaceId, Arc<SlotState>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        if let Some(answer) = self.cached(entries, workspace) {
            return answer;
        }
        let load = self.load(entries, workspace, |state| {
            fetch(self.inner.clone(), workspace.clone(), state)
        });
        self.finish(entries, workspace, load).await
    }

    /// Returns the cached or shared in-flight load for `workspace`, or starts one with `start`
    /// (given the new entry's `current` flag, cleared when the entry leaves the map).
    fn load<T, F, Fut>(
        &self,
        entries: &RwLock<Entries<T>>,
        workspace: &WorkspaceId,
        start: F,
    ) -> Load<T>
    where
        T: Clone + MaxAge + Send + Sync + 'static,
        F: FnOnce(Arc<SlotState>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let now = Instant::now();
        let mut entries = write_lock(entries);
        if let Some(slot) = entries.map.get(workspace) {
            match slot.load.peek() {
                // In flight, and not so old that it may never finish (a store that hangs).
                None if now < slot.started + MAX_JOIN_AGE => {
                    CacheMetrics::get().coalesced.increment(1);
                    return slot.load.clone();
                }
                Some(Ok(v)) if self.fresh(&Ok(v), slot.started, now) => {
                    slot.state.touch();
                    CacheMetrics::get().hit.increment(1);
                    return slot.load.clone();
                }
                Some(Err(e))
                    if matches!(**e, StoreError::NotFound)
                        && self.fresh::<T>(&Err(StoreError::NotFound), slot.started, now) =>
                {
                    CacheMetrics::get().hit.increment(1);
                    return slot.load.clone();
                }
                _ => {}
            }
        }
        CacheMetrics::get().miss.increment(1);
        // Driven by whichever caller polls it: a caller that gives up (a timed-out check) leaves
        // it to the next one, which finds it in the map and carries on from where it stopped.
        let state = SlotState::new();
        let load: Load<T> = start(state.clone())
            .map(|r| r.map_err(Arc::new))
            .boxed()
            .shared();
        if entries.map.len() >= self.capacity && !entries.map.contains_key(workspace) {
            self.make_room(&mut entries, now);
        }
        entries.map.insert(
            workspace.clone(),
            Slot {
                load: load.clone(),
                started: now,
                state,
            },
        );
        load
    }

    fn make_room<T: MaxAge>(&self, entries: &mut Entries<T>, now: Instant) {
        if now >= entries.next_sweep {
            let ttl = self.ttl_for::<T>();
            entries
                .map
                .retain(|_, s| s.load.peek().is_none() || now < s.started + ttl);
            entries.next_sweep = now + ttl;
        }
        if entries.map.len() >= self.capacity {
            if let Some(victim) = entries.map.keys().next().cloned() {
                entries.map.remove(&victim);
            }
        }
    }

    /// Awaits a load; an error other than NotFound is dropped from the cache so that the next
    /// request asks the store again.
    async fn finish<T: Clone>(
        &self,
        entries: &RwLock<Entries<T>>,
        workspace: &WorkspaceId,
        load: Load<T>,
    ) -> Result<T, StoreError> {
        match load.clone().await {
            Ok(v) => Ok(v),
            Err(e) => {
                if !matches!(*e, StoreError::NotFound) {
                    let mut entries = write_lock(entries);
                    if entries
                        .map
                        .get(workspace)
                        .is_some_and(|s| s.load.ptr_eq(&load))
                    {
                        entries.map.remove(workspace);
                    }
                }
                Err(shared_error(e))
            }
        }
    }

    /// Runs a write through to the inner store; the workspace's cached answers are dropped when
    /// it returns — successful or not, since a failed write may still have landed — and also if
    /// the caller stops waiting for it. A write that can change the registration
    /// (`registration_changes`) drops the last known registration too.
    async fn write_through<T>(
        &self,
        workspace: &WorkspaceId,
        registration_changes: bool,
        write: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        struct OnDrop<'a, S: ?Sized>(&'a CachingStore<S>, &'a WorkspaceId, bool);
        impl<S: ?Sized> Drop for OnDrop<'_, S> {
            fn drop(&mut self) {
                if self.2 {
                    self.0.invalidate(self.1);
                } else {
                    self.0.drop_answers(self.1);
                }
            }
        }
        let _invalidate = OnDrop(self, workspace, registration_changes);
        write.await
    }
}

fn shared_error(e: Arc<StoreError>) -> StoreError {
    match *e {
        StoreError::NotFound => StoreError::NotFound,
        _ => StoreError::Unavailable(Box::new(e)),
    }
}

/// `registration_ttl_nanos` when registrations follow the decision TTL.
const FOLLOW_TTL: u64 = u64::MAX;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn read_lock<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write_lock<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl<S: BudgetStore + ?Sized> BudgetStore for CachingStore<S> {
    async fn register(&self, workspace: &WorkspaceId) -> Result<(), StoreError> {
        self.write_through(workspace, true, self.inner.register(workspace))
            .await
    }

    async fn remove(&self, workspace: &WorkspaceId) -> Result<(), StoreError> {
        self.write_through(workspace, true, self.inner.remove(workspace))
            .await
    }

    async fn limits(&self, workspace: &WorkspaceId) -> Result<Limits, StoreError> {
        self.inner.limits(workspace).await
    }

    async fn patch_budget(
        &self,
        workspace: &WorkspaceId,
        patch: &BudgetPatch,
    ) -> Result<BudgetReport, StoreError> {
        self.write_through(workspace, false, self.inner.patch_budget(workspace, patch))
            .await
    }

    async fn patch_limits(
        &self,
        workspace: &WorkspaceId,
        patch: &LimitsPatch,
    ) -> Result<BudgetStatus, StoreError> {
        self.write_through(workspace, false, self.inner.patch_limits(workspace, patch))
            .await
    }

    /// Always asked of the inner store: the report is for people, not for the request path.
    async fn report(&self, workspace: &WorkspaceId) -> Result<BudgetReport, StoreError> {
        self.inner.report(workspace).await
    }

    fn status_now(&self, workspace: &WorkspaceId) -> Option<Result<BudgetStatus, StoreError>> {
        front::status(self, workspace).map(|status| status.ok_or(StoreError::NotFound))
    }

    async fn status(&self, workspace: &WorkspaceId) -> Result<BudgetStatus, StoreError> {
        self.get(&self.status, workspace, |inner, ws, _| async move {
            inner.status(&ws).await
        })
        .await
    }

    async fn retry_after(
        &self,
        workspace: &WorkspaceId,
        over: &Limits,
    ) -> Result<PerPeriod<Option<Duration>>, StoreError> {
        let started = Instant::now();
        let over = *over;
        // A cached answer computed for other limits is of no use: ask again.
        {
            let mut entries = write_lock(&self.retry);
            let stale = entries
                .map
                .get(workspace)
                .is_some_and(|s| matches!(s.load.peek(), Some(Ok((l, _))) if *l != over));
            if stale {
                entries.map.remove(workspace);
            }
        }
        let load = self.load(&self.retry, workspace, |_| {
            let (inner, ws) = (self.inner.clone(), workspace.clone());
            async move { inner.retry_after(&ws, &over).await.map(|r| (over, r)) }
        });
        let loaded_at = write_lock(&self.retry)
            .map
            .get(workspace)
            .map_or(started, |s| s.started);
        let (limits, waits) = self.finish(&self.retry, workspace, load).await?;
        if limits != over {
            // Joined a load for other limits that was in flight: answer this one directly.
            return self.inner.retry_after(workspace, &over).await;
        }
        // Served from cache: the waits have shrunk by the time since they were computed.
        let aged = started.saturating_duration_since(loaded_at);
        Ok(waits.map(|_, w| w.map(|w| w.saturating_sub(aged))))
    }

    async fn record_heartbeat(
        &self,
        heartbeat: &Heartbeat,
    ) -> Result<HeartbeatOutcome, StoreError> {
        self.write_through(
            &heartbeat.workspace,
            false,
            self.inner.record_heartbeat(heartbeat),
        )
        .await
    }

    async fn spend_history(
        &self,
        workspace: &WorkspaceId,
        step: Duration,
        from: chrono::DateTime<chrono::Utc>,
        buckets: usize,
    ) -> Result<Vec<i64>, StoreError> {
        self.inner
            .spend_history(workspace, step, from, buckets)
            .await
    }

    async fn list_workspaces(
        &self,
        after: Option<&WorkspaceId>,
        limit: usize,
    ) -> Result<Vec<WorkspaceId>, StoreError> {
        self.inner.list_workspaces(after, limit).await
    }

    async fn list_reports(
        &self,
        after: Option<&WorkspaceId>,
        limit: usize,
    ) -> Result<Vec<(WorkspaceId, BudgetReport)>, StoreError> {
        self.inner.list_reports(after, limit).await
    }

    async fn prune(&self) -> Result<u64, StoreError> {
        self.inner.prune().await
    }
}

#[async_trait]
impl<S: AlertOutbox + ?Sized> AlertOutbox for CachingStore<S> {
    async fn claim_alerts(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<PendingAlert>, StoreError> {
        self.inner.claim_alerts(max, lease).await
    }
    async fn alert_delivered(&self, alert: &PendingAlert) -> Result<(), StoreError> {
        self.inner.alert_delivered(alert).await
    }
    async fn alert_failed(
        &self,
        alert: &PendingAlert,
        delivered_to: &[String],
        retry_in: Duration,
    ) -> Result<(), StoreError> {
        self.inner.alert_failed(alert, delivered_to, retry_in).await
    }
    async fn expire_alerts(&self, max_age: Duration) -> Result<u64, StoreError> {
        self.inner.expire_alerts(max_age).await
    }
    async fn sweep_recovered(&self) -> Result<u64, StoreError> {
        self.inner.sweep_recovered().await
    }
}

#[async_trait]
impl<S: Registry + ?Sized> Registry for CachingStore<S> {
    async fn register_agent(
        &self,
        workspace: &WorkspaceId,
        registration: &Registration,
    ) -> Result<(), StoreError> {
        self.write_through(
            workspace,
            true,
            self.inner.register_agent(workspace, registration),
        )
        .await?;
        // The new registration is known: it is what to fall back on from now.
        self.last_known.replace(workspace, Some(registration));
        Ok(())
    }

    async fn registration(&self, workspace: &WorkspaceId) -> Result<Registration, StoreError> {
        let last_known = self.last_known.clone();
        self.get(
            &self.registration,
            workspace,
            move |inner, ws, state| async move {
                let answer = inner.registration(&ws).await;
                last_known.record(&ws, &answer, &state);
                answer
            },
        )
        .await
    }

    fn registration_now(
        &self,
        workspace: &WorkspaceId,
    ) -> Option<Result<Registration, StoreError>> {
        self.cached(&self.registration, workspace)
    }

    fn last_known_registration(&self, workspace: &WorkspaceId) -> Option<Registration> {
        read_lock(&self.last_known.map).get(workspace).cloned()
    }

    async fn workspace_for_token(
        &self,
        token_hash: &TokenHash,
    ) -> Result<Option<WorkspaceId>, StoreError> {
        if let Some(workspace) = self.tokens.get(token_hash, self.ttl()) {
            CacheMetrics::get().hit.increment(1);
            return Ok(Some(workspace));
        }
        let (since, started) = (self.tokens.epoch(), Instant::now());
        let answer = self.inner.workspace_for_token(token_hash).await?;
        if let Some(workspace) = &answer {
            self.tokens
                .record(*token_hash, workspace, since, started, self.capacity);
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    /// `registration_now` serves exactly what `registration` would from cache: nothing before a
    /// load, the cached registration after, nothing once a write dropped it.
    #[tokio::test]
    async fn registration_now_is_the_cached_answer() {
        let store: Arc<dyn crate::store::Store> = Arc::new(MemoryStore::new());
        let cache = CachingStore::new(store, Duration::from_secs(60), 10);
        let ws = WorkspaceId::new("ws-now").unwrap();
        let agent = Registration {
            agent_url: Some("http://127.0.0.1:1/a".into()),
            token_hash: None,
        };
        cache.register_agent(&ws, &agent).await.unwrap();
        assert!(cache.registration_now(&ws).is_none(), "not loaded yet");
        assert_eq!(cache.registration(&ws).await.unwrap(), agent);
        assert_eq!(cache.registration_now(&ws).unwrap().unwrap(), agent);
        let moved = Registration {
            agent_url: Some("http://127.0.0.1:2/b".into()),
            token_hash: None,
        };
        cache.register_agent(&ws, &moved).await.unwrap();
        assert!(
            cache.registration_now(&ws).is_none(),
            "the write dropped it"
        );
        let unknown = WorkspaceId::new("ws-unknown-now").unwrap();
        assert!(cache.registration(&unknown).await.is_err());
        assert!(matches!(
            cache.registration_now(&unknown),
            Some(Err(StoreError::NotFound))
        ));
    }
}
