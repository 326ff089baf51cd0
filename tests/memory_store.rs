//! The store contract, on the in-process store.

mod common;

use tower_budget::clock::ManualClock;
use tower_budget::store::MemoryStore;

async fn memory_store() -> (MemoryStore, ManualClock) {
    let clock = ManualClock::new(common::conformance::t0());
    (MemoryStore::new().with_clock(clock.clone()), clock)
}

conformance_tests!(memory_store);

/// The same contract through a `CachingStore` (TTL zero, since the suite moves a manual clock the
/// cache's TTL does not follow): every method forwards, and writes through it land.
mod through_the_caching_store {
    use std::sync::Arc;
    use std::time::Duration;

    use tower_budget::clock::ManualClock;
    use tower_budget::store::{CachingStore, MemoryStore};

    use crate::conformance_tests;

    async fn caching_store() -> (CachingStore<MemoryStore>, ManualClock) {
        let clock = ManualClock::new(crate::common::conformance::t0());
        let inner = Arc::new(MemoryStore::new().with_clock(clock.clone()));
        (CachingStore::new(inner, Duration::ZERO, 1_000), clock)
    }

    conformance_tests!(caching_store);
}

/// Registrations are served under their own TTL when one is set, else under the decision TTL.
#[tokio::test(start_paused = true)]
async fn registrations_follow_their_own_ttl() {
    use std::sync::Arc;
    use std::time::Duration;
    use tower_budget::store::{CachingStore, Registration, Registry};
    use tower_budget::WorkspaceId;

    let inner = Arc::new(MemoryStore::new());
    let cache = CachingStore::new(inner.clone(), Duration::from_secs(1), 100);
    let ws = WorkspaceId::new("w").unwrap();
    // Moved behind the cache's back, as an unnotified write elsewhere would.
    let move_to = |n: u32| {
        let (inner, ws) = (inner.clone(), ws.clone());
        async move {
            let to = Registration {
                agent_url: Some(format!("http://127.0.0.1:9/{n}")),
                token_hash: None,
            };
            inner.register_agent(&ws, &to).await.unwrap();
        }
    };
    let url = || async { cache.registration(&ws).await.unwrap().agent_url.unwrap() };
    move_to(1).await;
    assert!(url().await.ends_with("/1"));
    move_to(2).await;
    tokio::time::advance(Duration::from_millis(1_100)).await;
    assert!(url().await.ends_with("/2"), "follows the 1 s decision TTL");

    cache.set_registration_ttl(Some(Duration::from_secs(10)));
    assert_eq!(cache.registration_ttl(), Duration::from_secs(10));
    move_to(3).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(url().await.ends_with("/2"), "served for 10 s");
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(url().await.ends_with("/3"));

    cache.set_registration_ttl(None);
    assert_eq!(cache.registration_ttl(), Duration::from_secs(1));
    move_to(4).await;
    tokio::time::advance(Duration::from_millis(1_100)).await;
    assert!(url().await.ends_with("/4"), "back on the decision TTL");
}
