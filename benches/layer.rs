//! What does the layer add per request?
//!
//! One run: the bare inner service; the layer on a cached allowed decision; the same with budget
//! headers over many workspaces taken in turn (more than a worker thread's front cache holds, so
//! nearly every request reads the shared cache and renders headers); the layer on a cache miss
//! over the in-process store; the layer on a cache miss over Postgres (loopback). A miss is
//! forced with a 1 ns TTL, so it goes through the cache's full miss path (spawned, coalescable
//! load). No metrics recorder is installed (the `metrics` facade is then a no-op) until the last
//! variant.

#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::Criterion;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{service_fn, Layer, ServiceExt};
use tower_budget::layer::{BudgetDecision, BudgetLayer};
use tower_budget::period::{LimitsPatch, Period};
use tower_budget::store::postgres::PgStore;
use tower_budget::store::{BudgetStore, CachingStore, MemoryStore, DEFAULT_CACHE_CAPACITY};
use tower_budget::WorkspaceId;

type Body = Full<Bytes>;

/// Workspaces of the many-workspaces variant: above the 1,024 slots of a thread's front.
const MANY: usize = 2_000;

fn request() -> Request<Body> {
    request_for("ws-1")
}

fn request_for(workspace: &str) -> Request<Body> {
    Request::post(format!("/workspaces/{workspace}/a2a"))
        .body(Body::default())
        .unwrap()
}

async fn ready_workspace(store: &dyn BudgetStore) {
    ready(store, "ws-1", 1_000_000).await;
}

async fn ready(store: &dyn BudgetStore, id: &str, hourly: i64) {
    let ws = WorkspaceId::new(id).unwrap();
    store.register(&ws).await.unwrap();
    let patch = LimitsPatch::new()
        .with(Period::HOURLY, Some(hourly))
        .unwrap();
    store.patch_limits(&ws, &patch).await.unwrap();
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let inner = service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let many: Vec<String> = (0..MANY).map(|i| format!("ws-many-{i}")).collect();
    let memory = rt.block_on(async {
        let store = MemoryStore::new();
        ready_workspace(&store).await;
        // Each with its own limit: statuses differ, as spend would in real traffic.
        for (i, id) in many.iter().enumerate() {
            ready(&store, id, 1_000_000 + i as i64).await;
        }
        store
    });
    let memory: Arc<dyn BudgetStore> = Arc::new(memory);
    let pg = rt.block_on(async {
        let store = PgStore::new(pg::migrated_pool().await);
        ready_workspace(&store).await;
        store
    });

    let pg: Arc<dyn BudgetStore> = Arc::new(pg);
    let cached = BudgetLayer::from_arc(caching(&memory, Duration::from_secs(3600)));
    let many_headers = BudgetLayer::from_arc(caching(&memory, Duration::from_secs(3600)))
        .with_budget_headers(true);
    let miss_memory = BudgetLayer::from_arc(caching(&memory, Duration::from_nanos(1)));
    let miss_pg = BudgetLayer::from_arc(caching(&pg, Duration::from_nanos(1)))
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
        // Every one of the many workspaces is cached and allowed before the timing starts.
        for id in &many {
            let res = many_headers
                .layer(probe)
                .oneshot(request_for(id))
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert!(res.headers().contains_key(&tower_budget::layer::RATELIMIT));
        }
    });
    let many_requests: Vec<Request<Body>> = many.iter().map(|id| request_for(id)).collect();
    let many_headers = many_headers.layer(inner);
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
    group.bench_function("cached_allowed_headers_2000_workspaces", |b| {
        let mut next = 0;
        b.to_async(&rt).iter(|| {
            next = (next + 1) % MANY;
            // A copy of a prepared request: the path is not formatted inside the timing.
            let mut request = Request::new(Body::default());
            *request.method_mut() = many_requests[next].method().clone();
            *request.uri_mut() = many_requests[next].uri().clone();
            many_headers.clone().oneshot(request)
        })
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
    let recorded = BudgetLayer::from_arc(caching(&memory, Duration::from_secs(3600)))
        .with_budget_headers(true)
        .layer(inner);
    group.bench_function("cached_allowed_prometheus_headers", |b| {
        b.to_async(&rt).iter(|| recorded.clone().oneshot(request()))
    });
    group.finish();
    c.final_summary();
}

/// The decision cache the layer asks, as a user builds it.
fn caching(store: &Arc<dyn BudgetStore>, ttl: Duration) -> Arc<CachingStore<dyn BudgetStore>> {
    Arc::new(CachingStore::new(
        store.clone(),
        ttl,
        DEFAULT_CACHE_CAPACITY,
    ))
}
