//! BudgetLayer through `tower::ServiceExt::oneshot` over the in-process store: every decision,
//! the cache, failure handling and readiness. Time is Tokio's paused clock where it matters, so
//! nothing here sleeps for real.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::conformance::{set_limits, t0, ws};
use common::fake::{FaultyStore, Mode};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_budget::clock::ManualClock;
use tower_budget::layer::{
    BreakerState, BudgetDecision, BudgetLayer, FailMode, Header, UnavailableCause,
};
use tower_budget::period::Period;
use tower_budget::store::{
    BudgetStore, CachingStore, Heartbeat, MemoryStore, DEFAULT_CACHE_CAPACITY, DEFAULT_CACHE_TTL,
};

type Body = Full<Bytes>;

/// An inner service that counts its calls and answers 200 "ok", with the [`BudgetDecision`] it
/// found in the request's extensions copied to the response's (so the tests below read what the
/// layer handed to the inner service where the layer answers itself otherwise).
fn inner(
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static {
    service_fn(move |req: Request<Body>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let mut res = Response::new(Full::new(Bytes::from_static(b"ok")));
        if let Some(decision) = req.extensions().get::<BudgetDecision>() {
            res.extensions_mut().insert(decision.clone());
        }
        async { Ok::<_, Infallible>(res) }
    })
}

fn get(uri: &str) -> Request<Body> {
    Request::builder().uri(uri).body(Body::default()).unwrap()
}

async fn json_body<B: http_body::Body>(res: Response<B>) -> Value
where
    B::Error: std::fmt::Debug,
{
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

struct Fixture {
    store: FaultyStore,
    clock: ManualClock,
    calls: Arc<AtomicUsize>,
}

impl Fixture {
    /// ws-1 registered; reports at known times so that retry-after is exact.
    async fn new() -> Self {
        let clock = ManualClock::new(t0());
        let store = FaultyStore::new(MemoryStore::new().with_clock(clock.clone()));
        store.register(&ws("ws-1")).await.unwrap();
        Fixture {
            store,
            clock,
            calls: Arc::default(),
        }
    }

    /// Cumulative reports at the given seconds before t0; the clock ends at t0.
    async fn spend_at(&self, events: &[(i64, i64)]) {
        let mut cumulative = 0;
        for &(secs_ago, cents) in events {
            self.clock.set(t0() - chrono::Duration::seconds(secs_ago));
            cumulative += cents;
            self.store
                .record_heartbeat(&Heartbeat::new(ws("ws-1"), Some(cumulative), None))
                .await
                .unwrap();
        }
        self.clock.set(t0());
    }

    async fn limits(&self, pairs: &[(Period, Option<i64>)]) {
        set_limits(&self.store, "ws-1", pairs).await;
    }

    /// A layer over a caching store with the default settings, as the crate's docs build it.
    fn layer(&self) -> BudgetLayer {
        self.cached_layer(DEFAULT_CACHE_TTL, DEFAULT_CACHE_CAPACITY)
            .0
    }

    /// A layer over its own caching store, and that store (to write through).
    fn cached_layer(
        &self,
        ttl: Duration,
        capacity: usize,
    ) -> (BudgetLayer, Arc<CachingStore<FaultyStore>>) {
        let cache = Arc::new(CachingStore::new(
            Arc::new(self.store.clone()),
            ttl,
            capacity,
        ));
        (BudgetLayer::from_arc(cache.clone()), cache)
    }

    /// A layer that asks the store on every request.
    fn uncached_layer(&self) -> BudgetLayer {
        BudgetLayer::new(self.store.clone())
    }

    async fn send(
        &self,
        layer: &BudgetLayer,
        req: Request<Body>,
    ) -> Response<tower_budget::layer::ResponseBody<Body>> {
        layer
            .layer(inner(self.calls.clone()))
            .oneshot(req)
            .await
            .unwrap()
    }

    fn inner_calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn under_the_limit_passes_with_the_decision_in_extensions() {
    let f = Fixture::new().await;
    f.limits(&[(Period::HOURLY, Some(1_000))]).await;
    f.spend_at(&[(60, 400)]).await;
    let res = f.send(&f.layer(), get("/workspaces/ws-1/a2a")).await;
    assert_eq!(res.status(), StatusCode::OK);
    match res.extensions().get::<BudgetDecision>() {
        Some(BudgetDecision::Allowed { workspace, status }) => {
            assert_eq!(workspace.as_str(), "ws-1");
            assert_eq!(status.spend[Period::HOURLY], 400);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        res.headers().get("ratelimit").is_none(),
        "budget headers are opt-in"
    );
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
    assert_eq!(f.inner_calls(), 1);
}

#[tokio::test]
async fn each_period_blocks_with_the_spec_body_and_exact_retry_after() {
    // 600 cents 50 minutes ago, 600 cents 10 minutes ago → 1200 in every window.
    for p in Period::all() {
        let f = Fixture::new().await;
        f.spend_at(&[(3_000, 600), (600, 600)]).await;
        f.limits(&[(p, Some(1_000))]).await;
        let res = f.send(&f.layer(), get("/workspaces/ws-1/a2a")).await;
        assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED, "{p}");
        assert_eq!(res.headers()["content-type"], "application/json");
        // Dropping the first 600 (50 min ago) is enough: it leaves the window at window − 3000 s.
        let wait = p.window().as_secs() - 3_000;
        assert_eq!(
            res.headers()["retry-after"],
            wait.to_string().as_str(),
            "{p}"
        );
        assert!(matches!(
            res.extensions().get::<BudgetDecision>(),
            Some(BudgetDecision::Blocked(_))
        ));
        assert_eq!(
            json_body(res).await,
            json!({
                "error": "workspace budget limit exceeded",
                "exceeded_periods": [p.name()],
                "periods": {p.name(): {"limit": 1000, "spend": 1200, "remaining": -200, "retry_after_seconds": wait,
                                     "exhausted_in_seconds": 0}},
            })
        );
        assert_eq!(
            f.inner_calls(),
            0,
            "a refused request never reaches the inner service"
        );
    }
}

#[tokio::test]
async fn several_periods_at_once_in_table_order_and_retry_after_is_the_longest() {
    let f = Fixture::new().await;
    f.spend_at(&[(3_000, 600), (600, 600)]).await;
    f.limits(&[
        (Period::MONTHLY, Some(500)),
        (Period::HOURLY, Some(1_000)),
        (Period::DAILY, Some(5_000)),
    ])
    .await;
    let res = f.send(&f.layer(), get("/workspaces/ws-1/a2a")).await;
    assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED);
    // hourly: the first 600 leaving is enough (600 s); monthly needs both gone (30 d − 600 s).
    let monthly_wait = 30 * 86_400 - 600;
    assert_eq!(
        res.headers()["retry-after"],
        monthly_wait.to_string().as_str()
    );
    let body = json_body(res).await;
    assert_eq!(body["exceeded_periods"], json!(["hourly", "monthly"]));
    assert_eq!(body["periods"]["hourly"]["retry_after_seconds"], 600);
    assert_eq!(
        body["periods"]["monthly"]["retry_after_seconds"],
        monthly_wait
    );
    assert_eq!(
        body["periods"].as_object().unwrap().len(),
        2,
        "only exceeded periods are detailed"
    );
}

#[tokio::test]
async fn limit_zero_blocks_without_retry_after() {
    let f = Fixture::new().await;
    f.spend_at(&[(600, 600)]).await;
    f.limits(&[(Period::DAILY, Some(0)), (Period::HOURLY, Some(100))])
        .await;
    let res = f.send(&f.layer(), get("/workspaces/ws-1/a2a")).await;
    assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED);
    assert!(
        res.headers().get("retry-after").is_none(),
        "no wait helps a limit of 0"
    );
    let body = json_body(res).await;
    assert_eq!(body["exceeded_periods"], json!(["hourly", "daily"]));
    assert_eq!(
        body["periods"]["daily"],
        json!({"limit": 0, "spend": 600, "remaining": -600, "retry_after_seconds": null,
               "exhausted_in_seconds": 0})
    );
    assert_eq!(body["periods"]["hourly"]["retry_after_seconds"], 3_000);

    // Limit 0 with no spend at all still blocks.
    let f = Fixture::new().await;
    f.limits(&[(Period::HOURLY, Some(0))]).await;
    assert_eq!(
        f.send(&f.layer(), get("/workspaces/ws-1/a2a"))
            .await
            .status(),
        StatusCode::PAYMENT_REQUIRED
    );
}

#[tokio::test]
async fn requests_without_a_workspace_pass_untouched() {
    let f = Fixture::new().await;
    f.limits(&[(Period::HOURLY, Some(0))]).await;
    let res = f.send(&f.layer(), get("/healthz")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.extensions().get::<BudgetDecision>().is_none());
    assert_eq!(f.store.status_calls(), 0);
}

#[tokio::test]
async fn exempt_requests_pass_without_a_store_call() {
    let f = Fixture::new().await;
    f.limits(&[(Period::HOURLY, Some(0))]).await;
    let layer = f.layer().with_exempt(|p| {
        p.method == http::Method::GET && p.uri.path().ends_with("/.well-known/agent-card.json")
    });
    let card = f
        .send(
            &layer,
            get("/workspaces/ws-1/a2a/.well-known/agent-card.json"),
        )
        .await;
    assert_eq!(card.status(), StatusCode::OK);
    assert_eq!(f.store.status_calls(), 0);
    let call = f.send(&layer, get("/workspaces/ws-1/a2a")).await;
    assert_eq!(call.status(), StatusCode::PAYMENT_REQUIRED);
}

#[tokio::test]
async fn invalid_workspace_ids_get_400_before_any_store_call() {
    let f = Fixture::new().await;
    for uri in [
        "/workspaces/ws%2D1/a2a",
        "/workspaces//a2a",
        &format!("/workspaces/{}/a2a", "x".repeat(200)),
    ] {
        let res = f.send(&f.layer(), get(uri)).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{uri}");
        assert!(json_body(res).await["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid workspace id"));
    }
    let by_header = f
        .layer()
        .with_resolver(Header::new(http::HeaderName::from_static("x-workspace-id")));
    let req = Request::builder()
        .uri("/")
        .header("x-workspace-id", "a b")
        .body(Body::default())
        .unwrap();
    assert_eq!(
        f.send(&by_header, req).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(f.store.status_calls(), 0);
    assert_eq!(f.inner_calls(), 0);
}

#[tokio::test]
async fn unregistered_workspaces_are_never_blocked() {
    let f = Fixture::new().await;
    let res = f.send(&f.layer(), get("/workspaces/stranger/a2a")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(matches!(
        res.extensions().get::<BudgetDecision>(),
        Some(BudgetDecision::Unregistered { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn cache_hits_misses_and_invalidation_by_writes() {
    let f = Fixture::new().await;
    f.limits(&[(Period::HOURLY, Some(1_000))]).await;
    let (layer, store) = f.cached_layer(Duration::from_secs(1), DEFAULT_CACHE_CAPACITY);
    for _ in 0..5 {
        assert_eq!(
            f.send(&layer, get("/workspaces/ws-1/a2a")).await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(f.store.status_calls(), 1, "one miss, then hits");

    tokio::time::advance(Duration::from_millis(1_001)).await;
    f.send(&layer, get("/workspaces/ws-1/a2a")).await;
    assert_eq!(f.store.status_calls(), 2, "expired after the TTL");

    // A heartbeat through the caching store the layer asks pushes the workspace over: the next request sees it.
    store
        .record_heartbeat(&Heartbeat::new(ws("ws-1"), Some(1_500), None))
        .await
        .unwrap();
    assert_eq!(
        f.send(&layer, get("/workspaces/ws-1/a2a")).await.status(),
        StatusCode::PAYMENT_REQUIRED
    );
    // Raising the limit through it lets the next request through at once.
    set_limits(&store, "ws-1", &[(Period::HOURLY, Some(5_000))]).await;
    assert_eq!(
        f.send(&layer, get("/workspaces/ws-1/a2a")).await.status(),
        StatusCode::OK
    );

    // A write that bypasses that caching store is seen within one TTL.
    set_limits(&f.store, "ws-1", &[(Period::HOURLY, Some(0))]).await;
    assert_eq!(
        f.send(&layer, get("/workspaces/ws-1/a2a")).await.status(),
        StatusCode::OK,
        "cached"
    );
    tokio::time::advance(Duration::from_millis(1_001)).await;
    assert_eq!(
        f.send(&layer, get("/workspaces/ws-1/a2a")).await.status(),
        StatusCode::PAYMENT_REQUIRED
    );

    // Without a caching store every request asks the store; so does one with a zero TTL.
    let uncached = f.uncached_layer();
    let zero = f.cached_layer(Duration::ZERO, DEFAULT_CACHE_CAPACITY).0;
    let before = f.store.status_calls();
    for _ in 0..3 {
        f.send(&uncached, get("/workspaces/ws-1/a2a")).await;
        f.send(&zero, get("/workspaces/ws-1/a2a")).await;
    }
    assert_eq!(f.store.status_calls(), before + 6);
}

#[tokio::test]
async fn concurrent_misses_share_one_store_call() {
    let f = Fixture::new().await;
    let layer = f.layer();
    let gate = f.store.close_gate();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let svc = layer.layer(inner(f.calls.clone()));
            tokio::spawn(async move {
                svc.oneshot(get("/workspaces/ws-1/a2a"))
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    // Every request is waiting on the one call held at the gate.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while f.store.status_calls() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no store call started"
        );
        tokio::task::yield_now().await;
    }
    gate.add_permits(100);
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(f.store.status_calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn store_errors_and_timeouts_fail_open_by_default() {
    let f = Fixture::new().await;
    f.limits(&[(Period::HOURLY, Some(0))]).await;
    let layer = f.uncached_layer().with_breaker(0, Duration::from_secs(1));
    for (mode, cause) in [
        (Mode::Failing, UnavailableCause::StoreError),
        (Mode::Hanging, UnavailableCause::Timeout),
    ] {
        f.store.set_mode(mode);
        let started = tokio::time::Instant::now();
        let res = f.send(&layer, get("/workspaces/ws-1/a2a")).await;
        assert_eq!(res.status(), StatusCode::OK, "{mode:?}");
        assert!(
            started.elapsed() <= Duration::from_millis(50),
            "bounded by the 50 ms check timeout"
        );
        match res.extensions().get::<BudgetDecision>() {
            Some(BudgetDecision::Unavailable {
                cause: c,
                failed_open: true,
                ..
            }) => assert_eq!(*c, cause),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn fail_closed_answers_503_json() {
    let f = Fixture::new().await;
    let layer = f
        .layer()
        .with_fail_mode(FailMode::Closed)
        .with_check_timeout(Duration::from_millis(20))
        .unwrap();
    for mode in [Mode::Failing, Mode::Hanging] {
        f.store.set_mode(mode);
        let res = f.send(&layer, get("/workspaces/ws-1/a2a")).await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{mode:?}");
        assert_eq!(res.headers()["content-type"], "application/json");
        assert_eq!(
            json_body(res).await,
            json!({"error": "budget check unavailable"})
        );
    }
    assert_eq!(f.inner_calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_skips_the_store_probes_and_closes() {
    let f = Fixture::new().await;
    let layer = f.uncached_layer().with_breaker(3, Duration::from_secs(5));
    f.store.set_mode(Mode::Hanging);
    for _ in 0..3 {
        assert_eq!(
            f.send(&layer, get("/workspaces/ws-1/a2a")).await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(layer.breaker_state(), BreakerState::Open);
    let calls = f.store.status_calls();
    let started = tokio::time::Instant::now();
    let res = f.send(&layer, get("/workspaces/ws-1/a2a")).await;
    assert_eq!(started.elapsed(), Duration::ZERO, "open: no timeout to pay");
    assert!(matches!(
        res.extensions().get::<BudgetDecision>(),
        Some(BudgetDecision::Unavailable {
            cause: UnavailableCause::BreakerOpen,
            failed_open: true,
            ..
        })
    ));
    assert_eq!(
        f.store.status_calls(),
        calls,
        "open: the store is not called"
    );

    // The store recovers; after the cool-down one probe goes through and closes the breaker.
    f.store.set_mode(Mode::Healthy);
    tokio::time::advance(Duration::from_secs(5)).await;
    let res = f.send(&layer, get("/workspaces/ws-1/a2a")).await;
    assert!(matches!(
        res.extensions().get::<BudgetDecision>(),
        Some(BudgetDecision::Allowed { .. })
    ));
    assert_eq!(f.store.status_calls(), calls + 1);
    assert_eq!(layer.breaker_state(), BreakerState::Closed);
}

/// SPEC §6: a fresh cached answer — allow or refuse — is served whatever the breaker's state;
/// the fail mode applies only where no fresh answer exists. (An open breaker used to let a
/// cached refusal through, fail-open.)
#[tokio::test(start_paused = true)]
async fn a_fresh_cached_answer_stands_while_the_breaker_is_open() {
    let f = Fixture::new().await;
    f.limits(&[(Period::HOURLY, Some(100))]).await;
    f.spend_at(&[(60, 150)]).await;
    for id in ["ws-2", "ws-3"] {
        f.store.register(&ws(id)).await.unwrap();
    }
    let layer = f.layer().with_breaker(1, Duration::from_secs(5));
    let blocked = f.send(&layer, get("/workspaces/ws-1/a2a")).await;
    assert_eq!(blocked.status(), StatusCode::PAYMENT_REQUIRED);
    let allowed = f.send(&layer, get("/workspaces/ws-2/a2a")).await;
    assert_eq!(allowed.status(), StatusCode::OK);

    // The store goes down; a workspace with nothing cached opens the breaker.
    f.store.set_mode(Mode::Failing);
    f.send(&layer, get("/workspaces/ws-3/a2a")).await;
    assert_eq!(layer.breaker_state(), BreakerState::Open);
    let calls = f.store.status_calls();

    let res = f.send(&layer, get("/workspaces/ws-1/a2a")).await;
    assert_eq!(
        res.status(),
        StatusCode::PAYMENT_REQUIRED,
        "the cached refusal stands"
    );
    assert!(res.headers().contains_key("retry-after"), "cached too");
    let res = f.send(&layer, get("/workspaces/ws-2/a2a")).await;
    assert!(matches!(
        res.extensions().get::<BudgetDecision>(),
        Some(BudgetDecision::Allowed { .. })
    ));
    assert_eq!(f.store.status_calls(), calls, "answered from the cache");

    // Once the answers are stale, the fail mode applies (the breaker is still open).
    tokio::time::advance(Duration::from_secs(1)).await;
    let res = f.send(&layer, get("/workspaces/ws-1/a2a")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(matches!(
        res.extensions().get::<BudgetDecision>(),
        Some(BudgetDecision::Unavailable {
            cause: UnavailableCause::BreakerOpen,
            failed_open: true,
            ..
        })
    ));
}

#[tokio::test]
async fn budget_headers_on_allowed_responses() {
    let f = Fixture::new().await;
    f.limits(&[
        (Period::HOURLY, Some(1_000)),
        (Period::MONTHLY, Some(20_000)),
    ])
    .await;
    f.spend_at(&[(60, 250)]).await;
    let res = f
        .send(
            &f.layer().with_budget_headers(true),
            get("/workspaces/ws-1/a2a"),
        )
        .await;
    assert_eq!(
        res.headers()["ratelimit-policy"],
        r#""hourly";q=1000;w=3600, "monthly";q=20000;w=2592000"#
    );
    assert_eq!(res.headers()["ratelimit"], r#""hourly";r=750"#);
}

#[tokio::test]
async fn readiness_of_the_inner_service_is_honoured() {
    let f = Fixture::new().await;
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let mut svc = f.layer().layer(mock);
    handle.allow(0);
    assert!(
        poll_ready_once(&mut svc).is_pending(),
        "inner not ready → layer not ready"
    );
    handle.allow(1);
    assert!(
        poll_ready_once(&mut svc).is_ready(),
        "inner ready → layer ready"
    );
    let call = tokio::spawn(svc.call(get("/workspaces/ws-1/a2a")));
    let (req, send) = handle
        .next_request()
        .await
        .expect("the ready inner service got the request");
    assert_eq!(req.uri(), "/workspaces/ws-1/a2a");
    send.send_response(Response::new(Body::default()));
    assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
}

fn poll_ready_once<S: Service<Request<Body>>>(
    svc: &mut S,
) -> std::task::Poll<Result<(), S::Error>> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    svc.poll_ready(&mut cx)
}

#[tokio::test(start_paused = true)]
async fn a_hung_store_call_does_not_hold_a_workspace_for_ever() {
    let f = Fixture::new().await;
    f.limits(&[(Period::HOURLY, Some(0))]).await;
    let layer = f.layer().with_breaker(0, Duration::from_secs(1));
    f.store.set_mode(Mode::Hanging);
    let res = f.send(&layer, get("/workspaces/ws-1/a2a")).await;
    assert_eq!(res.status(), StatusCode::OK, "timed out: fail-open");
    f.store.set_mode(Mode::Healthy);
    // Within a second, checks join the call in flight (it still hangs)...
    let res = f.send(&layer, get("/workspaces/ws-1/a2a")).await;
    assert!(matches!(
        res.extensions().get::<BudgetDecision>(),
        Some(BudgetDecision::Unavailable {
            cause: UnavailableCause::Timeout,
            ..
        })
    ));
    assert_eq!(f.store.status_calls(), 1);
    // ...after it, a fresh call gets the store's answer.
    tokio::time::advance(Duration::from_secs(1)).await;
    let res = f.send(&layer, get("/workspaces/ws-1/a2a")).await;
    assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(f.store.status_calls(), 2);
}

#[tokio::test]
async fn the_cache_holds_at_most_its_capacity() {
    let f = Fixture::new().await;
    f.store.register(&ws("ws-2")).await.unwrap();
    let one = f.cached_layer(DEFAULT_CACHE_TTL, 1).0;
    for _ in 0..3 {
        f.send(&one, get("/workspaces/ws-1/a2a")).await;
        f.send(&one, get("/workspaces/ws-2/a2a")).await;
    }
    assert_eq!(
        f.store.status_calls(),
        6,
        "capacity 1: each workspace evicts the other"
    );
    let two = f.cached_layer(DEFAULT_CACHE_TTL, 2).0;
    for _ in 0..3 {
        f.send(&two, get("/workspaces/ws-1/a2a")).await;
        f.send(&two, get("/workspaces/ws-2/a2a")).await;
    }
    assert_eq!(f.store.status_calls(), 6 + 2, "capacity 2: both stay");
    assert!(f.layer().with_check_timeout(Duration::ZERO).is_err());
}

/// The caching store keeps the last registration for when the store cannot answer, and drops it
/// with a DELETE or a new registration through it (the gateway's proxy falls back on it).
#[tokio::test(start_paused = true)]
async fn the_last_known_registration_outlives_an_outage_but_not_a_delete() {
    use tower_budget::store::{Registration, Registry};
    let f = Fixture::new().await;
    let cache = CachingStore::new(Arc::new(f.store.clone()), Duration::from_secs(1), 100);
    let w = ws("ws-1");
    let url = |u: &str| Registration {
        agent_url: Some(u.into()),
        token_hash: None,
    };
    cache.register_agent(&w, &url("http://a/1")).await.unwrap();
    assert_eq!(
        cache.last_known_registration(&w),
        Some(url("http://a/1")),
        "a registration through the cache is known at once"
    );
    cache.registration(&w).await.unwrap();
    assert_eq!(cache.last_known_registration(&w), Some(url("http://a/1")));

    f.store.set_mode(Mode::Failing);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(cache.registration(&w).await.is_err());
    cache
        .record_heartbeat(&tower_budget::store::Heartbeat::new(
            w.clone(),
            Some(5),
            None,
        ))
        .await
        .unwrap();
    cache
        .patch_limits(&w, &tower_budget::period::LimitsPatch::new())
        .await
        .unwrap();
    assert_eq!(
        cache.last_known_registration(&w),
        Some(url("http://a/1")),
        "kept through the outage, heartbeats and patches"
    );

    f.store.set_mode(Mode::Healthy);
    cache.register_agent(&w, &url("http://a/2")).await.unwrap();
    assert_eq!(
        cache.last_known_registration(&w),
        Some(url("http://a/2")),
        "a new URL replaces it"
    );
    cache.registration(&w).await.unwrap();
    assert_eq!(cache.last_known_registration(&w), Some(url("http://a/2")));
    cache.remove(&w).await.unwrap();
    assert_eq!(cache.last_known_registration(&w), None, "a DELETE drops it");
    assert!(cache.registration(&w).await.is_err());
    assert_eq!(cache.last_known_registration(&w), None);
}

/// A lookup that read the registration before a DELETE and answers after it does not bring the
/// deleted URL back as the fallback.
#[tokio::test]
async fn a_lookup_racing_a_delete_does_not_revive_the_url() {
    use tower_budget::store::{Registration, Registry};
    let f = Fixture::new().await;
    let cache = Arc::new(CachingStore::new(
        Arc::new(f.store.clone()),
        Duration::from_secs(1),
        100,
    ));
    let w = ws("ws-1");
    let registration = Registration {
        agent_url: Some("http://a/1".into()),
        token_hash: None,
    };
    cache.register_agent(&w, &registration).await.unwrap();
    let gate = f.store.close_gate();
    let lookup = tokio::spawn({
        let (cache, w) = (cache.clone(), w.clone());
        async move { cache.registration(&w).await }
    });
    // One runtime thread: the lookup runs until it waits at the gate, its answer read.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!lookup.is_finished());
    cache.remove(&w).await.unwrap();
    assert_eq!(cache.last_known_registration(&w), None);
    gate.add_permits(1);
    assert_eq!(
        lookup.await.unwrap().unwrap(),
        registration,
        "the late answer"
    );
    assert_eq!(
        cache.last_known_registration(&w),
        None,
        "the deleted URL does not come back"
    );
}

/// Clones of a layer configured differently keep their own settings: configuring one changes
/// nothing in the other, nor in services made before.
#[tokio::test(start_paused = true)]
async fn clones_of_a_layer_keep_their_own_settings() {
    let f = Fixture::new().await;
    let open = f.uncached_layer().with_breaker(0, Duration::from_secs(1));
    let closed = open.clone().with_fail_mode(FailMode::Closed);
    f.store.set_mode(Mode::Failing);
    assert_eq!(
        f.send(&open, get("/workspaces/ws-1/a2a")).await.status(),
        StatusCode::OK,
        "the original still fails open"
    );
    assert_eq!(
        f.send(&closed, get("/workspaces/ws-1/a2a")).await.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "the configured clone fails closed"
    );
}
