//! The store contract, on the in-process store.

mod common;

use tower_budget::clock::ManualClock;
use tower_budget::store::MemoryStore;

async fn memory_store() -> (MemoryStore, ManualClock) {
    let clock = ManualClock::new(common::conformance::t0());
    (MemoryStore::new().with_clock(clock.clone()), clock)
}

conformance_tests!(memory_store);
