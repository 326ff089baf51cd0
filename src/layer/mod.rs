//! Budget enforcement as a Tower middleware.
//!
//! [`BudgetLayer`] wraps any `tower::Service<http::Request<B>>` (hyper, axum, tonic-web…). For
//! each request it:
//!
//! 1. resolves the workspace ([`ResolveWorkspace`]: a path segment — the default,
//!    `/workspaces/{id}/…` —, a header, a request extension or a closure). No workspace: the
//!    request passes through untouched. An invalid id (see [`WorkspaceId`](crate::WorkspaceId)):
//!    `400`, before any store call;
//! 2. asks the store it was given for the workspace's status — give it a
//!    [`CachingStore`](crate::store::CachingStore) for a decision cache (1 s TTL by default,
//!    concurrent misses coalesced into one store call, a fresh answer served without any await)
//!    —, bounded by the check timeout (50 ms);
//! 3. refuses with `402 Payment Required` when any period's spend has reached its limit:
//!
//!    ```text
//!    HTTP/1.1 402 Payment Required
//!    content-type: application/json
//!    retry-after: 1800
//!
//!    {"error":"workspace budget limit exceeded","exceeded_periods":["hourly"],
//!     "periods":{"hourly":{"limit":1000,"spend":1250,"remaining":-250,"retry_after_seconds":1800}}}
//!    ```
//!
//!    `retry_after_seconds` is computed from the ledger: the time until enough of the window's
//!    spend has aged out, if nothing new is spent. `Retry-After` carries the longest, and is absent
//!    when a limit of 0 is among the exceeded (no wait helps);
//! 4. otherwise calls the inner service. Bodies are never buffered: streams (SSE) pass through.
//!
//! The [`BudgetDecision`] travels with the request: a request that reaches the inner service
//! carries it in its extensions (handlers can read the workspace's limits and spend; in axum,
//! `Extension<BudgetDecision>`), and a response the layer makes itself (402, 503) carries it in
//! the response's extensions.
//!
//! # When the store is slow or down
//!
//! A store error, or a check slower than the timeout, lets the request through (fail-open,
//! the default) or refuses it with `503` ([`FailMode::Closed`]); a warning is logged at most once
//! per cause every 10 s, and counted. After 5 consecutive failures the breaker opens: for 5 s
//! requests skip the store entirely, then one probe decides whether it closes.
//!
//! # Budget headers
//!
//! With [`BudgetLayer::with_budget_headers`], allowed responses carry headers after the IETF
//! RateLimit header fields draft, quota unit USD cents, window in seconds:
//!
//! ```text
//! RateLimit-Policy: "hourly";q=1000;w=3600, "monthly";q=20000;w=2592000
//! RateLimit: "hourly";r=750
//! ```
//!
//! `RateLimit-Policy` lists every limited period; `RateLimit` gives the remaining cents of the
//! period with the least left (never negative).
//!
//! # Metrics
//!
//! Through the [`metrics`] facade (install any recorder; none is a no-op). The handles are
//! resolved at the first check, so install the recorder before serving:
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `tower_budget_decisions_total` | counter | `decision`: `allowed`, `unregistered`, `blocked`, `failed_open`, `failed_closed` |
//! | `tower_budget_blocked_total` | counter | `period`: each exceeded period of a refusal |
//! | `tower_budget_store_failures_total` | counter | `cause`: `timeout`, `store_error`, `breaker_open` |
//! | `tower_budget_cache_total` | counter | `result`: `hit`, `miss`, `coalesced`, `refreshed` (read again ahead of expiry, [`CachingStore::spawn_refresher`](crate::store::CachingStore::spawn_refresher)) (counted by a [`CachingStore`](crate::store::CachingStore), when the layer is given one) |
//! | `tower_budget_breaker_state` | gauge | 0 closed, 1 open, 2 half-open |
//! | `tower_budget_check_duration_seconds` | histogram | — (checks that wait for the store; cached allowed decisions are served without one) |
//!
//! # Example: axum
//!
//! ```
//! use std::sync::Arc;
//! use axum::{routing::post, Router};
//! use tower_budget::layer::BudgetLayer;
//! use tower_budget::store::{CachingStore, MemoryStore};
//!
//! // Write limits and heartbeats through `store`: the layer's decisions see them at once.
//! let store = Arc::new(CachingStore::with_defaults(Arc::new(MemoryStore::new())));
//! let layer = BudgetLayer::from_arc(store.clone()).with_budget_headers(true);
//! let app: Router = Router::new()
//!     .route("/workspaces/{id}/a2a", post(|| async { "agent answer" }))
//!     .layer(layer);
//! # drop((app, store));
//! ```
//!
//! # Example: hyper
//!
//! ```no_run
//! use std::convert::Infallible;
//! use http_body_util::Full;
//! use hyper::{body::Bytes, Request, Response};
//! use hyper_util::rt::{TokioExecutor, TokioIo};
//! use hyper_util::service::TowerToHyperService;
//! use tower::ServiceBuilder;
//! use tower_budget::layer::BudgetLayer;
//! use tower_budget::store::MemoryStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let service = ServiceBuilder::new()
//!     .layer(BudgetLayer::new(MemoryStore::new()))
//!     .service_fn(|_req: Request<hyper::body::Incoming>| async {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("agent answer"))))
//!     });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! loop {
//!     let (stream, _) = listener.accept().await?;
//!     let service = TowerToHyperService::new(service.clone());
//!     tokio::spawn(async move {
//!         let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
//!             .serve_connection(TokioIo::new(stream), service)
//!             .await;
//!     });
//! }
//! # }
//! ```

mod body;
mod breaker;
mod check;
mod decision;
mod future;
#[allow(clippy::module_inception)]
mod layer;
mod resolve;
mod service;
pub(crate) mod telemetry;

pub use body::ResponseBody;
pub use breaker::BreakerState;
pub use decision::{Blocked, BudgetDecision, UnavailableCause, RATELIMIT, RATELIMIT_POLICY};
pub use future::ResponseFuture;
pub use layer::{
    BudgetLayer, ConfigError, FailMode, DEFAULT_BREAKER_COOL_DOWN, DEFAULT_BREAKER_THRESHOLD,
    DEFAULT_CHECK_TIMEOUT, DEFAULT_WARN_INTERVAL,
};
pub use resolve::{Extension, Header, PathSegment, ResolveWorkspace};
pub use service::BudgetService;
