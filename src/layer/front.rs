//! A per-thread front for the decision cache: the request path's hit touches nothing another
//! thread writes.
//!
//! The [`CachingStore`] is shared by every worker thread; even a read of it takes its lock, and
//! under load the lock's cache line moves between cores on every request. Each thread therefore
//! keeps a small direct-mapped table of the entries it has read, with the budget headers
//! rendered once. An entry is served while its TTL runs and while the shared entry it was copied
//! from is still the workspace's entry: a write through the store (PATCH, heartbeat) or an
//! eviction clears the entry's `current` flag, which the front reads without a lock. So the front
//! changes nothing a caller can see: same answers, same staleness, same metrics.

use std::cell::RefCell;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::time::Instant;

use super::decision::{render_budget_headers, Rendered};
use crate::store::CacheMetrics;
use crate::store::{BudgetStatus, BudgetStore, CachingStore};
use crate::WorkspaceId;

/// Entries per thread. A collision only sends the request to the shared cache, which refills
/// the slot; a hash an attacker could aim costs them nothing but that. Entries are boxed, so an
/// unused slot costs a pointer (8 KiB a thread) and memory grows with the workspaces a thread
/// actually serves, up to ~300 KiB.
const SLOTS: usize = 1024;

thread_local! {
    static FRONT: RefCell<Vec<Option<Box<Entry>>>> = const { RefCell::new(Vec::new()) };
}

struct Entry {
    /// Which cache it came from ([`CachingStore::id`]).
    cache: u64,
    workspace: WorkspaceId,
    /// `None`: the store does not know the workspace.
    status: Option<BudgetStatus>,
    expires: Instant,
    current: Arc<AtomicBool>,
    /// Rendered at the first request that wants them.
    headers: Option<Rendered>,
}

/// The cached status of `workspace` when fresh (`Some(None)`: unknown to the store), with its
/// budget headers when `headers` is true.
pub(crate) fn cached_status(
    cache: &CachingStore<dyn BudgetStore>,
    workspace: &WorkspaceId,
    headers: bool,
) -> Option<(Option<BudgetStatus>, Rendered)> {
    FRONT
        .try_with(|front| {
            let mut front = front.borrow_mut();
            if front.is_empty() {
                front.resize_with(SLOTS, || None);
            }
            let id = cache.id();
            let slot = &mut front[index(id, workspace)];
            let now = Instant::now();
            let fresh = slot.as_ref().is_some_and(|e| {
                e.cache == id
                    && e.workspace == *workspace
                    && now < e.expires
                    && e.current.load(Ordering::Acquire)
            });
            if fresh {
                CacheMetrics::get().hit.increment(1);
            } else {
                let peeked = cache.peek_status(workspace)?;
                let entry = Entry {
                    cache: id,
                    workspace: workspace.clone(),
                    status: peeked.status,
                    expires: peeked.expires,
                    current: peeked.current,
                    headers: None,
                };
                match slot {
                    Some(boxed) => **boxed = entry,
                    None => *slot = Some(Box::new(entry)),
                }
            }
            let entry = slot.as_mut()?;
            let rendered = match &entry.status {
                Some(status) if headers => entry
                    .headers
                    .get_or_insert_with(|| render_budget_headers(status))
                    .clone(),
                _ => None,
            };
            Some((entry.status, rendered))
        })
        // Thread teardown: no front; the full check asks the shared cache.
        .unwrap_or(None)
}

fn index(cache: u64, workspace: &WorkspaceId) -> usize {
    // Fixed seed: the table is per thread and bounded, so a chosen collision only costs a miss.
    let hash = foldhash::fast::FixedState::with_seed(0x7b75_6467_6574).hash_one((cache, workspace));
    (hash as usize) % SLOTS
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::period::{LimitsPatch, Period};
    use crate::store::MemoryStore;

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

    /// The hourly limit and the `RateLimit-Policy` header the front serves for `ws`.
    fn served(cache: &CachingStore<dyn BudgetStore>, ws: &WorkspaceId) -> Option<(i64, String)> {
        let (status, headers) = cached_status(cache, ws, true)?;
        let limit = status?.limits.get(Period::HOURLY)?;
        let (policy, _) = headers?;
        Some((limit, policy.to_str().unwrap().to_owned()))
    }

    #[tokio::test]
    async fn a_write_through_the_cache_is_seen_at_once() {
        let ws = WorkspaceId::new("ws-front-1").unwrap();
        let cache = cache_with(&[("ws-front-1", 1000)], Duration::from_secs(60), 10).await;
        assert_eq!(served(&cache, &ws), None, "nothing loaded yet");
        cache.status(&ws).await.unwrap();
        let first = served(&cache, &ws).expect("loaded");
        assert_eq!(first, (1000, r#""hourly";q=1000;w=3600"#.to_owned()));
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
        assert_eq!(
            served(&cache, &ws),
            Some((2000, r#""hourly";q=2000;w=3600"#.to_owned())),
            "headers rendered for the new status"
        );
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
                to_main.send(served(&cache, &ws).map(|s| s.0)).unwrap();
                reader_rx.recv_timeout(DEADLINE).unwrap();
                to_main.send(served(&cache, &ws).map(|s| s.0)).unwrap();
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
        assert_eq!(served(&cache, &a).map(|s| s.0), Some(100));
        cache.status(&b).await.unwrap(); // capacity 1: evicts a
        assert_eq!(served(&cache, &a), None);
        assert_eq!(served(&cache, &b).map(|s| s.0), Some(200));
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
            assert_eq!(served(&one, &ws).map(|s| s.0), Some(100));
            assert_eq!(served(&two, &ws).map(|s| s.0), Some(200));
        }
    }

    #[tokio::test]
    async fn unknown_workspaces_and_headers_off() {
        let cache = cache_with(&[("ws-known", 100)], Duration::from_secs(60), 10).await;
        let unknown = WorkspaceId::new("ws-unknown").unwrap();
        assert!(cache.status(&unknown).await.is_err());
        assert_eq!(
            cached_status(&cache, &unknown, true).map(|(s, h)| (s, h.is_some())),
            Some((None, false)),
            "cached as unknown, no headers"
        );
        let known = WorkspaceId::new("ws-known").unwrap();
        cache.status(&known).await.unwrap();
        let (status, headers) = cached_status(&cache, &known, false).unwrap();
        assert!(
            status.is_some() && headers.is_none(),
            "headers only when asked"
        );
    }
}
