//! # tower-budget
//!
//! Per-workspace LLM spend budgets over rolling windows for agent platforms.
//!
//! Each workspace may have a limit in integer USD cents for every period of the
//! [period table](period) (hourly, daily, weekly, monthly — trailing windows). Agents report
//! their cumulative spend in heartbeats; a [store] turns the reports into an exact spend
//! ledger and answers "how much was spent in each window" in one round trip.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use tower_budget::period::{LimitsPatch, Period};
//! use tower_budget::store::{BudgetStore, Heartbeat, MemoryStore};
//! use tower_budget::WorkspaceId;
//!
//! let store = MemoryStore::new();
//! let ws = WorkspaceId::new("ws-1")?;
//! store.register(&ws).await?;
//! store.patch_limits(&ws, &LimitsPatch::new().with(Period::HOURLY, Some(1_000))?).await?;
//!
//! // The agent reports $12.50 spent so far.
//! store.record_heartbeat(&Heartbeat::new(ws.clone(), Some(1_250), None)).await?;
//!
//! let status = store.status(&ws).await?;
//! assert_eq!(status.exceeded_periods(), [Period::HOURLY]);
//! assert_eq!(status.period(Period::HOURLY).remaining, Some(-250));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! ## Features
//! - `postgres` (default): [`store::postgres::PgStore`] on deadpool-postgres, with embedded
//!   migrations.
//! - `api` (default): the companion HTTP handlers ([`api::BudgetApi`]) with token auth, the
//!   budget page, and the alert sender ([`webhook::AlertSender`]).
//!
//! Alerts (thresholds, the burn-rate forecast, events) are in [`alerts`].
#![deny(unsafe_code)]
#![deny(unreachable_pub)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod alerts;
#[cfg(feature = "api")]
pub mod api;
pub mod clock;
pub mod layer;
mod per_thread;
pub mod period;
mod response;
pub mod store;
#[cfg(feature = "api")]
pub mod webhook;
mod workspace;

pub use workspace::{InvalidWorkspaceId, WorkspaceId, MAX_WORKSPACE_ID_LEN};
