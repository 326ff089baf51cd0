//! The page's overview: what does `GET /workspaces?include=status` cost for a page of 1,000
//! workspaces? (SPEC §13; one query per page of workspaces.)
//!
//! One run, one server, one pool, the API service called in-process on a `PgStore` (no cache):
//! 1,000 workspaces with 100 ledger entries each over 30 days, half with a daily and a monthly
//! limit (most of those over their daily limit, so their unblock time is looked up too). The
//! page with status is measured against the plain listing of the same page (one query, ids
//! only) and against what the page would cost without it: 1,000 budget GETs, one per workspace.
//! Run with `scripts/bench --bench overview`.

#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::Criterion;
use http::Request;
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_budget::api::{BudgetApi, TokenAuth};
use tower_budget::store::postgres::PgStore;

const WORKSPACES: usize = 1_000;
const ENTRIES: i64 = 100;
const MONTH_SECS: f64 = 30.0 * 86_400.0;

async fn get(api: &BudgetApi, path: &str) -> serde_json::Value {
    let req = Request::get(path)
        .header("authorization", "Bearer admin")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = api.clone().oneshot(req).await.unwrap();
    assert!(res.status().is_success(), "{path}: {}", res.status());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// The whole overview as the page loads it: pages of 100 with status, following `next_after`.
async fn overview(api: &BudgetApi) -> Vec<serde_json::Value> {
    let mut listed = Vec::new();
    let mut after = String::new();
    loop {
        let page = get(api, &format!("/workspaces?include=status&limit=100{after}")).await;
        listed.extend(page["workspaces"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return listed,
        }
    }
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let now = chrono::Utc::now();
    let pool = rt.block_on(async {
        let pool = pg::migrated_pool().await;
        let client = pool.get().await.unwrap();
        eprintln!("seeding {WORKSPACES} workspaces …");
        for i in 0..WORKSPACES {
            let id = format!("ws-{i:04}");
            pg::seed_ledger(&client, &id, ENTRIES, MONTH_SECS, now).await;
            if i % 2 == 0 {
                client
                    .execute(
                        r#"UPDATE workspaces SET budget_limits = '{"daily": 20, "monthly": 1000}' WHERE id = $1"#,
                        &[&id],
                    )
                    .await
                    .unwrap();
            }
        }
        client.batch_execute("VACUUM ANALYZE").await.unwrap();
        // The plan, for BENCHMARKS.md.
        let plan = client
            .query(
                &format!(
                    "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {}",
                    tower_budget::store::postgres::report_page_sql()
                ),
                &[&None::<String>, &None::<chrono::DateTime<chrono::Utc>>, &1_000i64],
            )
            .await
            .unwrap();
        for row in plan {
            eprintln!("{}", row.get::<_, String>(0));
        }
        drop(client);
        pool
    });
    let store = Arc::new(PgStore::new(pool));
    let api = BudgetApi::new(store.clone(), TokenAuth::new("admin", store));
    let ids: Vec<String> = (0..WORKSPACES).map(|i| format!("ws-{i:04}")).collect();
    rt.block_on(async {
        let listed = overview(&api).await;
        let over = listed
            .iter()
            .filter(|w| !w["exceeded_periods"].as_array().unwrap().is_empty())
            .count();
        eprintln!("{} listed, {over} over a limit", listed.len());
        assert_eq!(listed.len(), WORKSPACES);
        assert!(over > 0);
    });

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8))
        .configure_from_args();
    let mut group = c.benchmark_group("overview");
    group.bench_function("list_1000", |b| {
        b.to_async(&rt)
            .iter(|| async { get(&api, "/workspaces?limit=1000").await })
    });
    group.bench_function("overview_1000_in_pages_of_100", |b| {
        b.to_async(&rt).iter(|| async { overview(&api).await })
    });
    group.bench_function("budget_get_each_1000", |b| {
        b.to_async(&rt).iter(|| async {
            for id in &ids {
                get(&api, &format!("/workspaces/{id}/budget")).await;
            }
        })
    });
    group.finish();
    c.final_summary();
}
