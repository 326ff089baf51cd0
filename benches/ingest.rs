//! How many heartbeats per second does the Postgres store take?
//!
//! 16 concurrent tasks, each reporting for its own workspace (cumulative spend growing), in
//! batches of 2,000; beside it in the same run, the same concurrency sending `SELECT 1`, and the
//! same heartbeats for 16 workspaces with a limit on every period and four alert thresholds
//! (each report then decides alerts: one index probe per period and the step; the limits are
//! high enough that no event fires, as in steady state).

#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use tower_budget::alerts::AlertThresholds;
use tower_budget::period::{LimitsPatch, Period};
use tower_budget::store::postgres::PgStore;
use tower_budget::store::{BudgetPatch, BudgetStore, Heartbeat};
use tower_budget::WorkspaceId;

type Workspaces = Arc<Vec<(WorkspaceId, AtomicI64)>>;

fn workspaces(prefix: &str) -> Workspaces {
    Arc::new(
        (0..TASKS)
            .map(|i| {
                (
                    WorkspaceId::new(&format!("{prefix}-{i}")).unwrap(),
                    AtomicI64::new(0),
                )
            })
            .collect(),
    )
}

/// `iters` batches of heartbeats, 16 tasks, each for its own workspace.
async fn heartbeats(store: PgStore, workspaces: Workspaces, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let tasks: Vec<_> = (0..TASKS)
            .map(|i| {
                let (store, workspaces) = (store.clone(), workspaces.clone());
                tokio::spawn(async move {
                    let (ws, cumulative) = &workspaces[i];
                    for _ in 0..BATCH / TASKS {
                        let now = cumulative.fetch_add(fastrand::i64(1..100), Ordering::Relaxed);
                        let hb = Heartbeat::new(ws.clone(), Some(now + 100), None);
                        let out = store.record_heartbeat(&hb).await.unwrap();
                        assert!(out.recorded_delta_cents > 0);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
    start.elapsed()
}

const TASKS: usize = 16;
const BATCH: usize = 2_000;

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(async { PgStore::new(pg::migrated_pool().await) });
    let plain = workspaces("agent");
    let watched = workspaces("watched");
    let limits = Period::all()
        .try_fold(LimitsPatch::new(), |p, period| {
            p.with(period, Some(i64::MAX / 4))
        })
        .unwrap();
    let alerting = BudgetPatch {
        limits,
        alert_thresholds: Some(Some(AlertThresholds::new(&[50, 80, 90, 100]).unwrap())),
    };
    rt.block_on(async {
        for (ws, _) in plain.iter().chain(watched.iter()) {
            store.register(ws).await.unwrap();
        }
        for (ws, _) in watched.iter() {
            store.patch_budget(ws, &alerting).await.unwrap();
        }
    });

    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8))
        .configure_from_args();
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("select_1", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let pool = store.pool().clone();
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let tasks: Vec<_> = (0..TASKS)
                        .map(|_| {
                            let pool = pool.clone();
                            tokio::spawn(async move {
                                for _ in 0..BATCH / TASKS {
                                    let client = pool.get().await.unwrap();
                                    let stmt = client.prepare_cached("SELECT 1").await.unwrap();
                                    client.query_one(&stmt, &[]).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                }
                start.elapsed()
            }
        })
    });
    group.bench_function("heartbeat", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| heartbeats(store.clone(), plain.clone(), iters))
    });
    group.bench_function("heartbeat_with_thresholds", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| heartbeats(store.clone(), watched.clone(), iters))
    });
    group.finish();
    c.final_summary();
}
