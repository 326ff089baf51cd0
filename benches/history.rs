//! Does a spend history cost grow with the ledger? (SPEC §13: "the cost grows with the number of
//! points, not with the ledger's size".)
//!
//! One run, one server, one pool: `SELECT 1` (the round-trip floor), then the 7-day hourly
//! history (169 buckets, `BudgetStore::spend_history`) and the 30-day daily one (31 buckets)
//! of a workspace with 1,000 ledger entries and of one with 1,000,000, both spread over 30 days.
//! Run with `scripts/bench --bench history`.

#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use tower_budget::store::postgres::PgStore;
use tower_budget::store::BudgetStore;
use tower_budget::WorkspaceId;

const SIZES: [i64; 2] = [1_000, 1_000_000];
const MONTH_SECS: f64 = 30.0 * 86_400.0;

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let now = chrono::Utc::now();
    let pool = rt.block_on(async {
        let pool = pg::migrated_pool().await;
        let client = pool.get().await.unwrap();
        eprintln!("building ledgers …");
        for n in SIZES {
            pg::seed_ledger(&client, &format!("busy-{n}"), n, MONTH_SECS, now).await;
        }
        client
            .batch_execute("VACUUM ANALYZE workspace_spend_events")
            .await
            .unwrap();
        // The plan, for BENCHMARKS.md: one index probe per bucket edge.
        let from =
            chrono::DateTime::from_timestamp(now.timestamp() / 3_600 * 3_600 - 7 * 86_400, 0);
        let plan = client
            .query(
                &format!(
                    "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {}",
                    tower_budget::store::postgres::history_sql()
                ),
                &[&"busy-1000000", &from, &3_600.0f64, &169i32],
            )
            .await
            .unwrap();
        for row in plan {
            eprintln!("{}", row.get::<_, String>(0));
        }
        drop(client);
        pool
    });
    let store = PgStore::new(pool.clone());
    let hour = Duration::from_secs(3_600);
    let day = Duration::from_secs(86_400);
    let floor = |secs: i64| {
        chrono::DateTime::from_timestamp(now.timestamp().div_euclid(secs) * secs, 0).unwrap()
    };
    let hourly_from = floor(3_600) - chrono::Duration::days(7);
    let daily_from = floor(86_400) - chrono::Duration::days(30);

    let mut c = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let mut group = c.benchmark_group("history");
    group.bench_function("select_1", |b| {
        b.to_async(&rt).iter(|| async {
            let client = pool.get().await.unwrap();
            let stmt = client.prepare_cached("SELECT 1").await.unwrap();
            client.query_one(&stmt, &[]).await.unwrap();
        })
    });
    for n in SIZES {
        let ws = WorkspaceId::new(&format!("busy-{n}")).unwrap();
        group.bench_with_input(BenchmarkId::new("hourly_7d", n), &ws, |b, ws| {
            b.to_async(&rt).iter(|| async {
                let points = store
                    .spend_history(ws, hour, hourly_from, 169)
                    .await
                    .unwrap();
                assert_eq!(points.len(), 169);
            })
        });
        group.bench_with_input(BenchmarkId::new("daily_30d", n), &ws, |b, ws| {
            b.to_async(&rt).iter(|| async {
                let points = store.spend_history(ws, day, daily_from, 31).await.unwrap();
                assert_eq!(points.len(), 31);
            })
        });
    }
    group.finish();
    c.final_summary();
}
