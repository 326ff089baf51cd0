//! BudgetLayer behind real HTTP servers on 127.0.0.1:0 with a real HTTP client: in an axum
//! Router and around a plain hyper service, on the Postgres and in-process stores; streaming
//! bodies; and a database that refuses connections or never answers.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::conformance::{set_limits, t0, ws};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_budget::clock::ManualClock;
use tower_budget::layer::{BudgetDecision, BudgetLayer};
use tower_budget::period::{LimitsPatch, Period};
use tower_budget::store::postgres::{PgStore, PoolOptions};
use tower_budget::store::{BudgetStore, CachingStore, Heartbeat, MemoryStore};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(client: &HttpClient, addr: SocketAddr, path: &str) -> Response<Incoming> {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Full::default())
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("answer within 10 s")
        .unwrap()
}

/// Serves a tower service with hyper on a fresh loopback port.
async fn serve<S, B>(service: S) -> SocketAddr
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::error::Error + Send + Sync + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// 600 cents 50 minutes and 600 cents 10 minutes before t0; the clock ends at t0.
async fn constructed_ledger<S: BudgetStore>(store: &S, clock: &ManualClock) {
    store.register(&ws("ws-1")).await.unwrap();
    for (secs_ago, cumulative) in [(3_000, 600), (600, 1_200)] {
        clock.set(t0() - chrono::Duration::seconds(secs_ago));
        store
            .record_heartbeat(&Heartbeat::new(ws("ws-1"), Some(cumulative), None))
            .await
            .unwrap();
    }
    clock.set(t0());
}

async fn pg_store(clock: &ManualClock) -> PgStore {
    PgStore::new(common::pg::migrated_pool().await).with_clock(clock.clone())
}

/// The layer in an axum Router, over both stores: 402 with the exact Retry-After from the ledger,
/// then a limit raised through the caching store the layer asks lets the next call through at once.
async fn axum_router_blocks_and_unblocks<S: BudgetStore>(store: S, clock: ManualClock) {
    constructed_ledger(&store, &clock).await;
    set_limits(&store, "ws-1", &[(Period::HOURLY, Some(1_000))]).await;
    let writes = Arc::new(CachingStore::with_defaults(Arc::new(store)));
    let layer = BudgetLayer::from_arc(writes.clone());
    let app = axum::Router::new()
        .route(
            "/workspaces/{id}/a2a",
            // A handler sees the check's result in the request's extensions.
            axum::routing::any(
                |decision: Option<axum::Extension<BudgetDecision>>| async move {
                    match decision.as_deref() {
                        Some(BudgetDecision::Allowed { status, .. }) => format!(
                            "agent answer, {} cents left this hour",
                            status.period(Period::HOURLY).remaining.unwrap()
                        ),
                        Some(other) => format!("agent answer ({})", other.label()),
                        None => "agent answer (not checked)".to_owned(),
                    }
                },
            ),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = client();

    let res = get(&client, addr, "/workspaces/ws-1/a2a").await;
    assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        res.headers()["retry-after"],
        "600",
        "the 600 cents of 50 minutes ago leave in 10 minutes"
    );
    let body: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        body["periods"]["hourly"],
        serde_json::json!({"limit": 1000, "spend": 1200, "remaining": -200, "retry_after_seconds": 600,
                           "exhausted_in_seconds": 0})
    );

    assert_eq!(
        get(&client, addr, "/healthz").await.status(),
        StatusCode::OK
    );
    let res = get(&client, addr, "/workspaces/stranger/a2a").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "agent answer (unregistered)"
    );

    set_limits(&writes, "ws-1", &[(Period::HOURLY, Some(5_000))]).await;
    let res = get(&client, addr, "/workspaces/ws-1/a2a").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "agent answer, 3800 cents left this hour"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_router_on_postgres() {
    let clock = ManualClock::new(t0());
    axum_router_blocks_and_unblocks(pg_store(&clock).await, clock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_router_on_the_memory_store() {
    let clock = ManualClock::new(t0());
    axum_router_blocks_and_unblocks(MemoryStore::new().with_clock(clock.clone()), clock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn around_a_plain_hyper_service_on_postgres() {
    let clock = ManualClock::new(t0());
    let store = pg_store(&clock).await;
    constructed_ledger(&store, &clock).await;
    // Limit 0 on daily and 1000 hourly: refused, and no Retry-After since no wait helps.
    let patch = LimitsPatch::new()
        .with(Period::DAILY, Some(0))
        .unwrap()
        .with(Period::HOURLY, Some(1_000))
        .unwrap();
    store.patch_limits(&ws("ws-1"), &patch).await.unwrap();
    let service = ServiceBuilder::new()
        .layer(BudgetLayer::new(store).with_budget_headers(true))
        .service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
        });
    let addr = serve(service).await;
    let client = client();
    let res = get(&client, addr, "/workspaces/ws-1/a2a").await;
    assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED);
    assert!(res.headers().get("retry-after").is_none());
    let body: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        body["exceeded_periods"],
        serde_json::json!(["hourly", "daily"])
    );
    let ok = get(&client, addr, "/workspaces/other/a2a").await;
    assert_eq!(ok.status(), StatusCode::OK);
}

/// The first chunk reaches the client before the inner service has produced the last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_bodies_are_not_buffered() {
    let store = MemoryStore::new();
    store.register(&ws("ws-1")).await.unwrap();
    set_limits(&store, "ws-1", &[(Period::HOURLY, Some(1_000))]).await;
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let service = ServiceBuilder::new()
        .layer(BudgetLayer::new(store))
        .service_fn(move |_req: Request<Incoming>| {
            let mut release = release_rx.clone();
            async move {
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
                tokio::spawn(async move {
                    tx.send(Ok(Frame::data(Bytes::from_static(b"data: first\n\n"))))
                        .await
                        .unwrap();
                    // The last event is produced only once the client has seen the first.
                    release.wait_for(|r| *r).await.unwrap();
                    tx.send(Ok(Frame::data(Bytes::from_static(b"data: last\n\n"))))
                        .await
                        .unwrap();
                });
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|f| (f, rx))
                });
                let mut res = Response::new(StreamBody::new(stream));
                res.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("text/event-stream"),
                );
                Ok::<_, Infallible>(res)
            }
        });
    let addr = serve(service).await;
    let res = get(&client(), addr, "/workspaces/ws-1/a2a").await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first chunk arrives while the last is not yet produced")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "data: first\n\n");
    release_tx.send(true).unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(rest, "data: last\n\n");
}

const CHECK_TIMEOUT: Duration = Duration::from_millis(50);
/// Loopback HTTP and scheduling on a busy 2-core machine, in a debug build.
const MARGIN: Duration = Duration::from_millis(450);

/// Requests through a layer whose Postgres cannot answer pass within the timeout + a margin.
async fn passes_within_the_timeout(database_url: String) {
    let mut options = PoolOptions::default();
    options.create_timeout = Duration::from_secs(5);
    let store = PgStore::new(options.build(&database_url).unwrap());
    let layer = BudgetLayer::new(store)
        .with_check_timeout(CHECK_TIMEOUT)
        .unwrap();
    let service =
        ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"through"))))
            });
    let addr = serve(service).await;
    let client = client();
    get(&client, addr, "/healthz").await; // connection established outside the measurement
    for i in 0..8 {
        let started = Instant::now();
        let res = get(&client, addr, &format!("/workspaces/ws-{i}/a2a")).await;
        let took = started.elapsed();
        assert_eq!(res.status(), StatusCode::OK, "request {i}");
        assert!(took < CHECK_TIMEOUT + MARGIN, "request {i} took {took:?}");
    }
    assert_eq!(
        layer.breaker_state(),
        tower_budget::layer::BreakerState::Open,
        "5 failures opened the breaker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refusing_connections_fails_open() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    passes_within_the_timeout(format!("postgres://nobody@{closed}/db")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_that_accepts_but_never_answers_fails_open() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            keep.lock().await.push(socket); // never a byte back
        }
    });
    passes_within_the_timeout(format!("postgres://nobody@{addr}/db")).await;
    assert!(
        !held.lock().await.is_empty(),
        "the store did try to connect"
    );
}
