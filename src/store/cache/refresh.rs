//! Refresh ahead: statuses in use are read again, many at once, shortly before they expire.
//!
//! With a long TTL (a change feed connected) and many active workspaces, each cached decision
//! still expires once per TTL, and the request that finds it expired pays a store read — with
//! 100,000 active workspaces on a 30 s TTL, thousands of reads a second, each a few ids at a time
//! (they rarely overlap). The refresher reads the statuses that were served from cache since
//! they were loaded and expire within [`AHEAD`], 256 at a time, so a store that
//! groups concurrent reads (Postgres does, `store::postgres::reads`) reads them in large groups
//! and the request path stops missing. A refreshed entry counts from when its read started,
//! so no answer is served longer after it was read than without refresh; an entry dropped
//! meanwhile (a write, a notification, an eviction) is not brought back. Refusals are served
//! for [`MAX_REFUSAL_AGE`](super::MAX_REFUSAL_AGE) at most and are not refreshed.
//!
//! Each read is counted in `tower_budget_cache_total{result="refreshed"}`. A store that fails
//! is asked again at the next pass for entries still due (at most [`AHEAD`] / [`EVERY`] times
//! each; no backoff, since each of those reads is bounded by the store's own timeouts). The pass
//! scans the status map under its read lock: with hundreds of thousands of entries, a few
//! milliseconds a second during which a miss waits to insert.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{read_lock, write_lock, CachingStore, Slot, SlotState};
use crate::store::{BudgetStatus, BudgetStore, StoreError};
use crate::WorkspaceId;

/// How long before it expires a used status is read again.
pub const AHEAD: Duration = Duration::from_secs(3);
/// How often the refresher looks for entries to read again.
pub const EVERY: Duration = Duration::from_secs(1);
/// TTLs shorter than this are left to the request path: refreshing ahead would read most
/// entries more often than they are asked for.
pub const MIN_TTL: Duration = Duration::from_secs(5);
/// Reads in flight at once: two of the Postgres store's groups of 128, so the request path's
/// misses always find one of its 8 group slots free. With 512 (four groups) a scale run let 43
/// calls through unchecked at 100,000 active workspaces: their misses queued behind refresh
/// reads past the 50 ms check timeout; with 256, none.
const CONCURRENCY: usize = 256;

/// The refresher's task; dropping it stops the refresher.
#[derive(Debug)]
#[must_use = "dropping the refresher stops it"]
pub struct Refresher(JoinHandle<()>);

impl Drop for Refresher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<S: BudgetStore + ?Sized + 'static> CachingStore<S> {
    /// Starts reading, every [`EVERY`], the statuses that were served since they were loaded
    /// and expire within [`AHEAD`] (only while the TTL is at least [`MIN_TTL`]). Holds the
    /// cache weakly: it stops when the cache is dropped, or when the handle is. Must be called
    /// within a Tokio runtime.
    pub fn spawn_refresher(self: &Arc<Self>) -> Refresher {
        let cache: Weak<Self> = Arc::downgrade(self);
        Refresher(tokio::spawn(async move {
            let mut every = tokio::time::interval(EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(cache) = cache.upgrade() else { return };
                cache.refresh_due().await;
            }
        }))
    }

    /// Reads again the statuses due for refresh (see [`spawn_refresher`](Self::spawn_refresher))
    /// and returns how many it replaced.
    pub async fn refresh_due(&self) -> usize {
        let due = self.due_for_refresh(Instant::now());
        super::CacheMetrics::get()
            .refreshed
            .increment(due.len() as u64);
        let inner = &self.inner;
        let mut reads = futures_util::stream::iter(due)
            .map(|(workspace, state)| async move {
                let started = Instant::now();
                let answer = inner.status(&workspace).await;
                (workspace, state, started, answer)
            })
            .buffer_unordered(CONCURRENCY);
        let mut replaced = 0;
        while let Some((workspace, state, started, answer)) = reads.next().await {
            // An error leaves the entry to expire; the request path reads it then.
            if let Ok(status) = answer {
                replaced += usize::from(self.replace_status(&workspace, &state, status, started));
            }
        }
        replaced
    }

    /// The used, allowed statuses that expire within [`AHEAD`] of `now`.
    fn due_for_refresh(&self, now: Instant) -> Vec<(WorkspaceId, Arc<SlotState>)> {
        let ttl = self.ttl();
        if ttl < MIN_TTL {
            return Vec::new();
        }
        let entries = read_lock(&self.status);
        entries
            .map
            .iter()
            .filter(|(_, slot)| {
                let expires = slot.started + ttl;
                matches!(slot.load.peek(), Some(Ok(status)) if !status.is_exceeded())
                    && slot.state.used.load(std::sync::atomic::Ordering::Relaxed)
                    && now < expires
                    && expires <= now + AHEAD
            })
            .map(|(workspace, slot)| (workspace.clone(), slot.state.clone()))
            .collect()
    }

    /// Replaces `workspace`'s entry with `status`, read from `started` on, if the entry is
    /// still the one that was due (`state`): one dropped meanwhile stays dropped.
    fn replace_status(
        &self,
        workspace: &WorkspaceId,
        state: &Arc<SlotState>,
        status: BudgetStatus,
        started: Instant,
    ) -> bool {
        let mut entries = write_lock(&self.status);
        let Some(slot) = entries.map.get_mut(workspace) else {
            return false;
        };
        if !Arc::ptr_eq(&slot.state, state) {
            return false;
        }
        let load = futures_util::future::ready(Ok::<_, Arc<StoreError>>(status))
            .boxed()
            .shared();
        // Polled once, so that it is complete: `peek` serves only completed loads.
        let _ = load.clone().now_or_never();
        // The old slot is dropped here, which clears its `current` flag: copies of it stop
        // being served and read the new one.
        *slot = Slot {
            load,
            started,
            state: SlotState::new(),
        };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::period::{LimitsPatch, Period};
    use crate::store::MemoryStore;

    const TTL: Duration = Duration::from_secs(30);

    async fn cache_with(ids: &[&str]) -> (Arc<MemoryStore>, CachingStore<MemoryStore>) {
        let store = Arc::new(MemoryStore::new());
        for id in ids {
            let ws = WorkspaceId::new(id).unwrap();
            store.register(&ws).await.unwrap();
            set_hourly(&*store, &ws, 1000).await;
        }
        (store.clone(), CachingStore::new(store, TTL, 100))
    }

    async fn set_hourly(store: &dyn BudgetStore, ws: &WorkspaceId, cents: i64) {
        let patch = LimitsPatch::new()
            .with(Period::HOURLY, Some(cents))
            .unwrap();
        store.patch_limits(ws, &patch).await.unwrap();
    }

    fn hourly(cache: &CachingStore<MemoryStore>, ws: &WorkspaceId) -> Option<i64> {
        cache.status_now(ws)?.ok()?.limits.get(Period::HOURLY)
    }

    /// An entry served since it was loaded is read again before it expires, and is then served
    /// past the old entry's expiry with what the store says now.
    #[tokio::test(start_paused = true)]
    async fn a_used_entry_is_read_again_before_it_expires() {
        let ws = WorkspaceId::new("ws-refresh").unwrap();
        let (store, cache) = cache_with(&["ws-refresh"]).await;
        cache.status(&ws).await.unwrap();
        assert_eq!(hourly(&cache, &ws), Some(1000), "served: now used");
        // Changed behind the cache's back (another process, its notification lost).
        set_hourly(&*store, &ws, 2000).await;
        tokio::time::advance(TTL - AHEAD - Duration::from_millis(1)).await;
        assert_eq!(cache.refresh_due().await, 0, "not due yet");
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(cache.refresh_due().await, 1);
        tokio::time::advance(AHEAD).await;
        assert_eq!(
            hourly(&cache, &ws),
            Some(2000),
            "the refreshed entry outlives the old one and says what the store says"
        );
        tokio::time::advance(TTL - AHEAD).await;
        assert_eq!(hourly(&cache, &ws), None, "a TTL after its read it expires");
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_nobody_asked_for_is_left_to_expire() {
        let ws = WorkspaceId::new("ws-idle").unwrap();
        let (_store, cache) = cache_with(&["ws-idle"]).await;
        cache.status(&ws).await.unwrap(); // loaded, never served from cache
        tokio::time::advance(TTL - Duration::from_secs(1)).await;
        assert_eq!(cache.refresh_due().await, 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(hourly(&cache, &ws), None);
    }

    /// A write (or a notification) that drops the entry while its refresh is in flight wins:
    /// the read, which may predate the write, is not installed.
    #[tokio::test(start_paused = true)]
    async fn an_entry_dropped_during_its_refresh_stays_dropped() {
        let ws = WorkspaceId::new("ws-raced").unwrap();
        let (store, cache) = cache_with(&["ws-raced"]).await;
        cache.status(&ws).await.unwrap();
        hourly(&cache, &ws);
        tokio::time::advance(TTL - Duration::from_secs(1)).await;
        let due = cache.due_for_refresh(Instant::now());
        assert_eq!(due.len(), 1);
        let (_, state) = &due[0];
        let read = store.status(&ws).await.unwrap(); // the refresh's read, before the write
        set_hourly(&cache, &ws, 2000).await; // through the cache: drops the entry
        assert!(!cache.replace_status(&ws, state, read, Instant::now()));
        assert_eq!(hourly(&cache, &ws), None, "nothing stale was installed");
        assert_eq!(
            cache.status(&ws).await.unwrap().limits.get(Period::HOURLY),
            Some(2000)
        );
    }

    /// A reconnect's `clear()` while reads are in flight: nothing read before it comes back.
    #[tokio::test(start_paused = true)]
    async fn a_clear_during_a_refresh_wins() {
        let ws = WorkspaceId::new("ws-cleared").unwrap();
        let (store, cache) = cache_with(&["ws-cleared"]).await;
        cache.status(&ws).await.unwrap();
        hourly(&cache, &ws);
        tokio::time::advance(TTL - Duration::from_secs(1)).await;
        let due = cache.due_for_refresh(Instant::now());
        let read = store.status(&ws).await.unwrap();
        cache.clear();
        assert!(!cache.replace_status(&ws, &due[0].1, read, Instant::now()));
        assert_eq!(hourly(&cache, &ws), None);
    }

    /// The spawned refresher keeps a used entry served past its first expiry, with what the
    /// store says by then (virtual time: the refresher's ticks run as the clock is advanced).
    #[tokio::test(start_paused = true)]
    async fn the_spawned_refresher_keeps_used_entries_fresh() {
        let ws = WorkspaceId::new("ws-spawned").unwrap();
        let (store, cache) = cache_with(&["ws-spawned"]).await;
        let cache = Arc::new(cache);
        let _refresher = cache.spawn_refresher();
        cache.status(&ws).await.unwrap();
        hourly(&cache, &ws);
        set_hourly(&*store, &ws, 2000).await;
        for _ in 0..TTL.as_secs() + 1 {
            tokio::time::advance(Duration::from_secs(1)).await;
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(hourly(&cache, &ws), Some(2000), "refreshed, not expired");
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_and_short_ttls_are_not_refreshed() {
        let ws = WorkspaceId::new("ws-refused").unwrap();
        let (store, cache) = cache_with(&["ws-refused"]).await;
        set_hourly(&*store, &ws, 0).await;
        cache.status(&ws).await.unwrap();
        assert!(cache.status_now(&ws).unwrap().unwrap().is_exceeded());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(cache
            .due_for_refresh(Instant::now() + TTL - AHEAD)
            .is_empty());

        let allowed = WorkspaceId::new("ws-short").unwrap();
        store.register(&allowed).await.unwrap();
        cache.set_ttl(MIN_TTL - Duration::from_millis(1));
        cache.status(&allowed).await.unwrap();
        hourly(&cache, &allowed);
        assert!(cache
            .due_for_refresh(Instant::now() + MIN_TTL - AHEAD)
            .is_empty());
    }
}
