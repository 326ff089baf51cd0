//! The one test harness: a real PostgreSQL (see `pg`) and the store conformance suite.
#![allow(dead_code, unused_imports, unused_macros)]

pub mod agent;
#[cfg(feature = "test-util")]
pub mod conformance;
pub mod fake;
#[cfg(feature = "postgres")]
pub mod gateway;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod receiver;
#[cfg(feature = "postgres")]
pub mod relay;

/// The seed for a randomized test: `TEST_SEED` when set, else a fresh one. Printed, so that a
/// failure can be replayed with `TEST_SEED=<seed>`.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("{test}: seed {seed} (replay with TEST_SEED={seed})");
    seed
}
