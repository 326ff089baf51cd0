//! The one test harness: a real PostgreSQL (see `pg`) and the store conformance suite.
#![allow(dead_code, unused_imports, unused_macros)]

pub mod agent;
pub mod conformance;
pub mod fake;
#[cfg(feature = "postgres")]
pub mod gateway;
#[cfg(feature = "postgres")]
pub mod pg;
#[cfg(feature = "postgres")]
pub mod relay;
