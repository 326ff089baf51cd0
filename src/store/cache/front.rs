//! The caching store's per-thread front: a hit on the request path touches nothing another
//! thread writes.
//!
//! The [`CachingStore`] is shared by every worker thread; even a read of it takes its lock, and
//! under load the lock's cache line moves between cores on every request. Each thread therefore
//! keeps a small direct-mapped table of the status entries it has read. An entry is served while
//! the cache's TTL (for a refusal at most `MAX_REFUSAL_AGE`) runs and while the shared entry it
//! was copied from is still the workspace's entry: a write through the store (PATCH, heartbeat)
//! or an eviction clears the entry's `current` flag, which the front reads without a lock. So the front changes nothing a caller can see: same
//! answers, same staleness, same metrics.

use std::cell::RefCell;
use std::sync::Arc;

use tokio::time::Instant;

use super::{CacheMetrics, CachingStore, MaxAge, SlotState};
use crate::per_thread::Slots;
use crate::store::BudgetStatus;
use crate::WorkspaceId;

thread_local! {
    /// 1,024 boxed entries: an unused slot costs a pointer (8 KiB a thread), and memory grows
    /// with the workspaces a thread actually serves.
    static FRONT: RefCell<Slots<Box<Entry>>> =
        const { RefCell::new(Slots::new(1024, 0x7b75_6467_6574)) };
}

struct Entry {
    /// Which cache it came from (the cache's `id`).
    cache: u64,
    workspace: WorkspaceId,
    /// `None`: the store does not know the workspace.
    status: Option<BudgetStatus>,
    /// When the shared entry was loaded; served while the cache's TTL runs from then.
    started: Instant,
    state: Arc<SlotState>,
}

/// The cached status of `workspace` when fresh (`Some(None)`: unknown to the store).
pub(super) fn status<S: ?Sized>(
    cache: &CachingStore<S>,
    workspace: &WorkspaceId,
) -> Option<Option<BudgetStatus>> {
    FRONT
        .try_with(|front| {
            let mut front = front.borrow_mut();
            let id = cache.id;
            let slot = front.slot((id, workspace));
            let now = Instant::now();
            // The TTL is read each time: a change feed that disconnects shortens it at once.
            let ttl = cache.ttl();
            if let Some(e) = slot.as_ref().filter(|e| {
                e.cache == id
                    && e.workspace == *workspace
                    && now < e.started + e.status.map_or(ttl, |s| s.max_age(ttl))
                    && e.state.is_current()
            }) {
                e.state.touch();
                CacheMetrics::get().hit.increment(1);
                return Some(e.status);
            }
            let peeked = cache.peek_status(workspace)?;
            let entry = Entry {
                cache: id,
                workspace: workspace.clone(),
                status: peeked.status,
                started: peeked.started,
                state: peeked.state,
            };
            match slot {
                Some(boxed) => **boxed = entry,
                None => *slot = Some(Box::new(entry)),
            }
            Some(peeked.status)
        })
        // Thread teardown: no front; ask the shared cache.
        .unwrap_or_else(|_| cache.peek_status(workspace).map(|p| p.status))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::period::{LimitsPatch, Period};
    use crate::store::{BudgetStore, MemoryStore};

    async fn cache_with(
        workspaces: &[(&str, i64)],
        ttl: Duration,
        capacity: usize,
    ) -> CachingStore<dyn BudgetStore> {
        let store: Arc<dyn BudgetStore> = Arc::new(MemoryStore::new());
        let cache = CachingStore::new(store, ttl, capacity);
        for &(id, hourly) in workspaces {
            let ws = WorkspaceId::new(id).unwrap();
            cache.register(&ws).await.unwrap();
            set_hourly(&cache, &ws, hourly).await;
        }
        cache
    }

    async fn set_hourly(cache: &CachingStore<dyn BudgetStore>, ws: &WorkspaceId, cents: i64) {
        let patch = LimitsPatch::new()
            .with(Period::HOURLY, Some(cents))
            .unwrap();
        cache.patch_limits(ws, &patch).await.unwrap();
    }

    /// The hourly limit the front serves for `ws`.
    fn served(cache: &CachingStore<dyn BudgetStore>, ws: &WorkspaceId) -> Option<i64> {
        status(cache, ws)??.limits.get(Period::HOURLY)
    }

    #[tokio::test]
    async fn a_write_through_the_cache_is_seen_at_once() {
        let ws = WorkspaceId::new("ws-front-1").unwrap();
        let cache = cache_with(&[("ws-front-1", 1000)], Duration::from_secs(60), 10).await;
        assert_eq!(served(&cache, &ws), None, "nothing loaded yet");
        cache.status(&ws).await.unwrap();
        let first = served(&cache, &ws).expect("loaded");
        assert_eq!(first, 1000);
        assert_eq!(
            served(&cache, &ws),
            Some(first),
            "served again from the front"
        );

        set_hourly(&cache, &ws, 2000).await;
        assert_eq!(
            served(&cache, &ws),
            None,
            "the copy of the old entry is not served"
        );
        cache.status(&ws).await.unwrap();
        assert_eq!(served(&cache, &ws), Some(2000), "the new status");
    }

    #[tokio::test]
    async fn a_write_on_one_thread_clears_another_threads_copy() {
        use std::sync::mpsc::channel;
        const DEADLINE: Duration = Duration::from_secs(10);
        let ws = WorkspaceId::new("ws-front-threads").unwrap();
        let cache =
            Arc::new(cache_with(&[("ws-front-threads", 1000)], Duration::from_secs(60), 10).await);
        cache.status(&ws).await.unwrap();
        let (to_reader, reader_rx) = channel::<()>();
        let (to_main, main_rx) = channel::<Option<i64>>();
        let reader = std::thread::spawn({
            let (cache, ws) = (cache.clone(), ws.clone());
            move || {
                // Fills this thread's front, then reads again once the other thread has written.
                to_main.send(served(&cache, &ws)).unwrap();
                reader_rx.recv_timeout(DEADLINE).unwrap();
                to_main.send(served(&cache, &ws)).unwrap();
            }
        });
        assert_eq!(
            main_rx.recv_timeout(DEADLINE).unwrap(),
            Some(1000),
            "the reader's front holds it"
        );
        set_hourly(&cache, &ws, 2000).await;
        to_reader.send(()).unwrap();
        assert_eq!(
            main_rx.recv_timeout(DEADLINE).unwrap(),
            None,
            "the reader's copy is stale"
        );
        reader.join().unwrap();
    }

    #[tokio::test]
    async fn an_evicted_entry_is_not_served() {
        let (a, b) = (
            WorkspaceId::new("ws-a").unwrap(),
            WorkspaceId::new("ws-b").unwrap(),
        );
        let cache = cache_with(&[("ws-a", 100), ("ws-b", 200)], Duration::from_secs(60), 1).await;
        cache.status(&a).await.unwrap();
        assert_eq!(served(&cache, &a), Some(100));
        cache.status(&b).await.unwrap(); // capacity 1: evicts a
        assert_eq!(served(&cache, &a), None);
        assert_eq!(served(&cache, &b), Some(200));
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_entry_is_not_served() {
        let ws = WorkspaceId::new("ws-front-ttl").unwrap();
        let cache = cache_with(&[("ws-front-ttl", 1000)], Duration::from_secs(1), 10).await;
        cache.status(&ws).await.unwrap();
        assert!(served(&cache, &ws).is_some());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(served(&cache, &ws).is_some(), "within the TTL");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(served(&cache, &ws), None, "the TTL is up");
    }

    #[tokio::test]
    async fn caches_do_not_share_entries() {
        let ws = WorkspaceId::new("ws-shared-name").unwrap();
        let one = cache_with(&[("ws-shared-name", 100)], Duration::from_secs(60), 10).await;
        let two = cache_with(&[("ws-shared-name", 200)], Duration::from_secs(60), 10).await;
        one.status(&ws).await.unwrap();
        two.status(&ws).await.unwrap();
        for _ in 0..2 {
            assert_eq!(served(&one, &ws), Some(100));
            assert_eq!(served(&two, &ws), Some(200));
        }
    }

    #[tokio::test]
    async fn unknown_workspaces_are_served_as_unknown() {
        let cache = cache_with(&[], Duration::from_secs(60), 10).await;
        let unknown = WorkspaceId::new("ws-unknown").unwrap();
        assert_eq!(status(&cache, &unknown), None, "nothing loaded yet");
        assert!(cache.status(&unknown).await.is_err());
        assert_eq!(status(&cache, &unknown), Some(None), "cached as unknown");
    }

    /// A refusal is served for at most a second whatever the TTL (spend ages out without any
    /// write to say so); an allowed status for the whole TTL.
    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_served_for_a_second_at_most() {
        let (over, under) = (
            WorkspaceId::new("ws-over").unwrap(),
            WorkspaceId::new("ws-under").unwrap(),
        );
        let cache = cache_with(
            &[("ws-over", 0), ("ws-under", 1000)],
            Duration::from_secs(60),
            10,
        )
        .await;
        cache.status(&over).await.unwrap();
        cache.status(&under).await.unwrap();
        assert!(status(&cache, &over).unwrap().unwrap().is_exceeded());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(status(&cache, &over).is_some(), "within a second");
        assert!(cache.status_now(&over).is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            status(&cache, &over),
            None,
            "the refusal is not served longer"
        );
        assert!(cache.status_now(&over).is_none());
        assert_eq!(
            served(&cache, &under),
            Some(1000),
            "the allowed status stays"
        );
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(served(&cache, &under), None, "until the TTL");
    }
}
