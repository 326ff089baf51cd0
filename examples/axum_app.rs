//! Drop-in: an existing axum app adds budget enforcement to one router and mounts the budget API.
//!
//! ```text
//! cargo run --example axum_app -- 127.0.0.1:3000      # admin token: $ADMIN_TOKEN or "dev-admin"
//! ```
//!
//! `/health` and `/users/{id}` are the app's own routes, untouched. Calls to
//! `/workspaces/{id}/agent` are budget-checked: over a limit → 402. The budget API (limits,
//! heartbeats, registry) answers everything else, writing through the store the layer asks, so that a
//! change is enforced at once.

use std::sync::Arc;

use axum::extract::Path;
use axum::routing::{get, post};
use axum::{Extension, Router};
use tower_budget::api::{BudgetApi, TokenAuth};
use tower_budget::layer::{BudgetDecision, BudgetLayer};
use tower_budget::store::{CachingStore, MemoryStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let admin = std::env::var("ADMIN_TOKEN").unwrap_or_else(|_| "dev-admin".into());

    // One caching store for the layer and the API: decisions see every write at once.
    let store = Arc::new(CachingStore::with_defaults(Arc::new(MemoryStore::new())));
    let budget = BudgetLayer::from_arc(store.clone()).with_budget_headers(true);

    // Only the agent router is checked; the handler sees the decision (limits, spend).
    let agents = Router::new()
        .route("/workspaces/{id}/agent", post(agent))
        .layer(budget);

    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/users/{id}",
            get(|Path(id): Path<String>| async move { format!("user {id}") }),
        )
        .merge(agents)
        .fallback_service(BudgetApi::new(store.clone(), TokenAuth::new(&admin, store)));

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn agent(decision: Option<Extension<BudgetDecision>>) -> String {
    match decision.as_deref() {
        Some(BudgetDecision::Allowed { status, .. }) => {
            format!(
                "agent answer; hourly spend so far: {} cents",
                status.spend[tower_budget::period::Period::HOURLY]
            )
        }
        _ => "agent answer".into(),
    }
}
