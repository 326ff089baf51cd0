//! The store contract, on a real PostgreSQL; plus what only the Postgres store has.

mod common;

use tower_budget::clock::ManualClock;
use tower_budget::store::postgres::PgStore;

async fn postgres_store() -> (PgStore, ManualClock) {
    let clock = ManualClock::new(common::conformance::t0());
    let pool = common::pg::migrated_pool().await;
    (PgStore::new(pool).with_clock(clock.clone()), clock)
}

conformance_tests!(postgres_store);
