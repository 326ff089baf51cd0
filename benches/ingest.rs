//! How many heartbeats per second does the Postgres store take?
//!
//! 16 concurrent tasks, each reporting for its own workspace (cumulative spend growing), in
//! batches of 2,000; beside it in the same run, the same concurrency sending `SELECT 1`.

#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use tower_budget::store::postgres::PgStore;
use tower_budget::store::{BudgetStore, Heartbeat};
use tower_budget::WorkspaceId;

const TASKS: usize = 16;
const BATCH: usize = 2_000;

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(async { PgStore::new(pg::migrated_pool().await) });
    let workspaces: Arc<Vec<(WorkspaceId, AtomicI64)>> = Arc::new(
        (0..TASKS)
            .map(|i| {
                (
                    WorkspaceId::new(&format!("agent-{i}")).unwrap(),
                    AtomicI64::new(0),
                )
            })
            .collect(),
    );
    rt.block_on(async {
        for (ws, _) in workspaces.iter() {
            store.register(ws).await.unwrap();
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
        b.to_async(&rt).iter_custom(|iters| {
            let (store, workspaces) = (store.clone(), workspaces.clone());
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let tasks: Vec<_> = (0..TASKS)
                        .map(|i| {
                            let (store, workspaces) = (store.clone(), workspaces.clone());
                            tokio::spawn(async move {
                                let (ws, cumulative) = &workspaces[i];
                                for _ in 0..BATCH / TASKS {
                                    let now = cumulative
                                        .fetch_add(fastrand::i64(1..100), Ordering::Relaxed);
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
        })
    });
    group.finish();
    c.final_summary();
}
