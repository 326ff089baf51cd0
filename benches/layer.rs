//! What does the layer add per request?
//!
//! One run: the bare inner service; the layer on a cached allowed decision; the layer on a cache
//! miss over the in-process store; the layer on a cache miss over Postgres (loopback). A miss is
//! forced with a 1 ns TTL, so it goes through the cache's full miss path (spawned, coalescable
//! load). No metrics recorder is installed (the `metrics` facade is then a no-op).

#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use criterion::Criterion;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{service_fn, Layer, ServiceExt};
use tower_budget::layer::{BudgetDecision, BudgetLayer};
use tower_budget::period::{LimitsPatch, Period};
use tower_budget::store::postgres::PgStore;
use tower_budget::store::{BudgetStore, MemoryStore};
use tower_budget::WorkspaceId;

type Body = Full<Bytes>;

fn request() -> Request<Body> {
    Request::post("/workspaces/ws-1/a2a")
        .body(Body::default())
        .unwrap()
}

async fn ready_workspace(store: &dyn BudgetStore) {
    let ws = WorkspaceId::new("ws-1").unwrap();
    store.register(&ws).await.unwrap();
    let patch = LimitsPatch::new()
        .with(Period::HOURLY, Some(1_000_000))
        .unwrap();
    store.patch_limits(&ws, &patch).await.unwrap();
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let inner = service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let memory = rt.block_on(async {
        let store = MemoryStore::new();
        ready_workspace(&store).await;
        store
    });
    let memory = std::sync::Arc::new(memory);
    let pg = rt.block_on(async {
        let store = PgStore::new(pg::migrated_pool().await);
        ready_workspace(&store).await;
        store
    });

    let cached = BudgetLayer::from_arc(memory.clone()).with_cache_ttl(Duration::from_secs(3600));
    let miss_memory = BudgetLayer::from_arc(memory.clone()).with_cache_ttl(Duration::from_nanos(1));
    let miss_pg = BudgetLayer::new(pg)
        .with_cache_ttl(Duration::from_nanos(1))
        .with_check_timeout(Duration::from_secs(5))
        .unwrap();
    // Every variant must let the request through on an allowed decision: a failing check would
    // measure nothing. This inner service answers 200 only when the layer handed it one.
    let probe = service_fn(|req: Request<Body>| async move {
        let allowed = matches!(
            req.extensions().get::<BudgetDecision>(),
            Some(BudgetDecision::Allowed { .. })
        );
        let mut res = Response::new(Body::default());
        if !allowed {
            *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
        Ok::<_, Infallible>(res)
    });
    rt.block_on(async {
        for layer in [&cached, &miss_memory, &miss_pg] {
            let res = layer.layer(probe).oneshot(request()).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        }
    });
    let (cached, miss_memory, miss_pg) = (
        cached.layer(inner),
        miss_memory.layer(inner),
        miss_pg.layer(inner),
    );

    let mut c = Criterion::default()
        .sample_size(60)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut group = c.benchmark_group("layer");
    group.bench_function("bare_service", |b| {
        b.to_async(&rt).iter(|| inner.oneshot(request()))
    });
    group.bench_function("cached_allowed", |b| {
        b.to_async(&rt).iter(|| cached.clone().oneshot(request()))
    });
    group.bench_function("miss_memory_store", |b| {
        b.to_async(&rt)
            .iter(|| miss_memory.clone().oneshot(request()))
    });
    group.bench_function("miss_postgres_store", |b| {
        b.to_async(&rt).iter(|| miss_pg.clone().oneshot(request()))
    });
    // Last, since it installs a global recorder: the cached path with metrics really recorded
    // (the gateway's setup), and with budget headers on as the gateway runs it.
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    let recorded = BudgetLayer::from_arc(memory.clone())
        .with_cache_ttl(Duration::from_secs(3600))
        .with_budget_headers(true)
        .layer(inner);
    group.bench_function("cached_allowed_prometheus_headers", |b| {
        b.to_async(&rt).iter(|| recorded.clone().oneshot(request()))
    });
    group.finish();
    c.final_summary();
}
