//! How much does the budget check cost, and does it grow with history?
//!
//! One run, one server, one pool: `SELECT 1` (the round-trip floor), `PgStore::status` and the
//! seed's FILTERed query over the raw ledger, for one workspace with 1k, 10k, 86,400 and 1M
//! ledger events spread over 30 days, among 1,000 workspaces (996 others hold 1,000 events each).
//!
//! `scripts/bench` runs this and turns the figures into BENCHMARKS.md's table and plot.

#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use criterion::{BenchmarkId, Criterion};
use tower_budget::store::postgres::PgStore;
use tower_budget::store::BudgetStore;
use tower_budget::WorkspaceId;

const SIZES: [i64; 4] = [1_000, 10_000, 86_400, 1_000_000];
const MONTH_SECS: f64 = 30.0 * 86_400.0;

/// The query the seed ran on every call, verbatim, with the index it had.
const SEED_QUERY: &str =
    "SELECT COALESCE(SUM(delta_cents) FILTER (WHERE occurred_at > now() - interval '1 hour'), 0),
       COALESCE(SUM(delta_cents) FILTER (WHERE occurred_at > now() - interval '24 hours'), 0),
       COALESCE(SUM(delta_cents) FILTER (WHERE occurred_at > now() - interval '7 days'), 0),
       COALESCE(SUM(delta_cents) FILTER (WHERE occurred_at > now() - interval '30 days'), 0)
FROM workspace_spend_events WHERE workspace_id = $1 AND occurred_at > now() - interval '30 days'";

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pool = rt.block_on(async {
        let pool = pg::migrated_pool().await;
        let client = pool.get().await.unwrap();
        let now = chrono::Utc::now();
        eprintln!("building ledgers …");
        client
            .batch_execute(
                "INSERT INTO workspaces (id) SELECT 'bg-' || w FROM generate_series(1, 996) w;
                 INSERT INTO workspace_spend_events (workspace_id, occurred_at, delta_cents, total_cents)
                 SELECT 'bg-' || w, now() - (1000 - i) * (2592000.0 / 1000) * interval '1 second', 7, 7 * i
                 FROM generate_series(1, 996) w, generate_series(1, 1000) i;",
            )
            .await
            .unwrap();
        for n in SIZES {
            pg::seed_ledger(&client, &format!("busy-{n}"), n, MONTH_SECS, now).await;
        }
        // Multi-statement strings run as one transaction, where VACUUM may not: one at a time.
        for sql in [
            "CREATE INDEX seed_events_ws_time ON workspace_spend_events (workspace_id, occurred_at DESC)",
            "VACUUM ANALYZE workspace_spend_events",
            "ANALYZE workspaces",
        ] {
            client.batch_execute(sql).await.unwrap();
        }
        let rows: i64 = client
            .query_one("SELECT count(*) FROM workspace_spend_events", &[])
            .await
            .unwrap()
            .get(0);
        eprintln!("ledger holds {rows} events");
        drop(client);
        pool
    });
    let store = PgStore::new(pool.clone());

    let mut c = Criterion::default()
        .sample_size(60)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3))
        .configure_from_args();
    let mut group = c.benchmark_group("status");
    group.bench_function("select_1", |b| {
        b.to_async(&rt).iter(|| async {
            let client = pool.get().await.unwrap();
            let stmt = client.prepare_cached("SELECT 1").await.unwrap();
            client.query_one(&stmt, &[]).await.unwrap().get::<_, i32>(0)
        })
    });
    for n in SIZES {
        let ws = WorkspaceId::new(&format!("busy-{n}")).unwrap();
        let expected = rt.block_on(store.status(&ws)).unwrap();
        assert!(expected.spend[tower_budget::period::Period::MONTHLY] > 0);
        group.bench_with_input(BenchmarkId::new("tower_budget", n), &ws, |b, ws| {
            b.to_async(&rt)
                .iter(|| async { store.status(ws).await.unwrap() })
        });
        group.bench_with_input(BenchmarkId::new("seed_query", n), &ws, |b, ws| {
            b.to_async(&rt).iter(|| async {
                let client = pool.get().await.unwrap();
                let stmt = client.prepare_cached(SEED_QUERY).await.unwrap();
                // SUM(bigint) is NUMERIC, which this crate does not decode: the row is enough.
                client
                    .query_one(&stmt, &[&ws.as_str()])
                    .await
                    .unwrap()
                    .len()
            })
        });
    }
    group.finish();
    c.final_summary();
}
