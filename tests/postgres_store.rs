//! The store contract, on a real PostgreSQL; plus what only the Postgres store has.

mod common;

use tower_budget::clock::ManualClock;
use tower_budget::period::Period;
use tower_budget::store::postgres::PgStore;
use tower_budget::store::BudgetStore;
use tower_budget::WorkspaceId;

async fn postgres_store() -> (PgStore, ManualClock) {
    let clock = ManualClock::new(common::conformance::t0());
    let pool = common::pg::migrated_pool().await;
    (PgStore::new(pool).with_clock(clock.clone()), clock)
}

conformance_tests!(postgres_store);

/// Rows the status statement reads, from the plan of a real execution: the sum over its scan
/// nodes of rows × loops, and whether any node scanned a whole table.
async fn rows_read_by_status(client: &tokio_postgres::Client, workspace: &str) -> (f64, bool) {
    client
        .batch_execute(&format!(
            // The plan production gets after a few executions (generic), for the database's
            // clock (`$2` NULL).
            "SET plan_cache_mode = force_generic_plan; PREPARE status_probe AS {}",
            tower_budget::store::postgres::status_sql()
        ))
        .await
        .unwrap();
    let plan: serde_json::Value = client
        .query_one(
            &format!("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE status_probe('{workspace}', NULL)"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute("DEALLOCATE status_probe")
        .await
        .unwrap();
    fn walk(node: &serde_json::Value, rows: &mut f64, seq_scan: &mut bool) {
        let kind = node["Node Type"].as_str().unwrap_or_default();
        if kind.contains("Scan") {
            *rows += node["Actual Rows"].as_f64().unwrap() * node["Actual Loops"].as_f64().unwrap();
            *seq_scan |= kind == "Seq Scan" && node["Relation Name"] == "workspace_spend_events";
        }
        for child in node["Plans"].as_array().into_iter().flatten() {
            walk(child, rows, seq_scan);
        }
    }
    let (mut rows, mut seq_scan) = (0.0, false);
    walk(&plan[0]["Plan"], &mut rows, &mut seq_scan);
    (rows, seq_scan)
}

/// The check reads a fixed number of rows whatever the ledger's size: one per window edge plus
/// the workspace row, for 100 events as for 100,000.
#[tokio::test]
async fn status_reads_a_bounded_number_of_rows_whatever_the_history() {
    let pool = common::pg::migrated_pool().await;
    let client = pool.get().await.unwrap();
    let now = chrono::Utc::now();
    for (id, events) in [("small", 100), ("large", 100_000)] {
        common::pg::seed_ledger(&client, id, events, 30.0 * 86_400.0, now).await;
    }
    client
        .batch_execute("ANALYZE workspace_spend_events")
        .await
        .unwrap();
    let bound = (Period::all().len() + 2) as f64;
    for id in ["small", "large"] {
        let (rows, seq_scan) = rows_read_by_status(&client, id).await;
        assert!(!seq_scan, "{id}: the ledger was scanned whole");
        assert!(
            rows <= bound,
            "{id}: status read {rows} rows, bound {bound}"
        );
    }
    // And the answer is the exact sum: 7 cents an event, evenly spread over 30 days.
    let store = PgStore::new(pool.clone());
    let status = store
        .status(&WorkspaceId::new("large").unwrap())
        .await
        .unwrap();
    let brute: i64 = client
        .query_one(
            "SELECT COALESCE(SUM(delta_cents), 0)::BIGINT FROM workspace_spend_events
             WHERE workspace_id = 'large' AND occurred_at > now() - interval '1 day'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // The store's clock read `now` a moment after the SQL `now()` above, so allow one event.
    assert!(
        (status.spend[Period::DAILY] - brute).abs() <= 7,
        "{} vs {brute}",
        status.spend[Period::DAILY]
    );
}
