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
