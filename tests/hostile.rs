//! Hostile input. Property tests (proptest, seeded from `TEST_SEED`, the seed printed) over the
//! budget API's bodies, paths and headers and over stored limits: never a panic, never a 5xx,
//! nothing changed on rejection. Then the real gateway against slow clients, hundreds of idle
//! connections, floods of unknown workspace ids and random proxy paths: time and memory stay
//! bounded.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::agent::Agent;
use common::gateway::{Gateway, ADMIN};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use serde_json::{json, Map, Value};
use tower::ServiceExt;
use tower_budget::api::{BudgetApi, TokenAuth};
use tower_budget::period::Limits;
use tower_budget::store::{BudgetStore, MemoryStore, Store};
use tower_budget::WorkspaceId;

fn runner(test: &str, cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(common::seed(test)),
        failure_persistence: None,
        ..Config::default()
    })
}

const KEYS: &[&str] = &[
    "hourly",
    "daily",
    "weekly",
    "monthly",
    "yearly",
    "budget_limits",
    "budget_limit",
    "alert_thresholds",
    "workspace_id",
    "monthly_spend",
    "seq",
    "status",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(KEYS).prop_map(str::to_owned),
        1 => "\\PC{0,12}",
    ]
}

/// Any JSON value serde can hold, biased toward the keys and numbers the API reads.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (0i64..10_000).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,16}".prop_map(Value::from),
        Just(json!("ws-1")),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Raw numbers serde cannot hold as they are, spliced into JSON text.
const ODD_NUMBERS: &[&str] = &[
    "1e400",
    "-1e400",
    "99999999999999999999999",
    "-99999999999999999999999",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551616",
    "-0",
    "0.0",
    "1.0",
    "1E2",
    "-1",
    "0",
];

fn body_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => json_value().prop_map(|v| v.to_string()),
        2 => (
            prop::sample::select(&["budget_limits", "budget_limit", "monthly_spend", "seq"][..]),
            prop::sample::select(&["hourly", "daily", "monthly", "yearly"][..]),
            prop::sample::select(ODD_NUMBERS),
        )
            .prop_map(|(field, period, n)| match field {
                "budget_limits" => format!(r#"{{"budget_limits": {{"{period}": {n}}}}}"#),
                _ => format!(r#"{{"workspace_id": "ws-1", "{field}": {n}}}"#),
            }),
        1 => "\\PC{0,64}",
        1 => prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

struct Api {
    api: BudgetApi,
    store: Arc<dyn Store>,
    token: String,
}

async fn api() -> Api {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let api = BudgetApi::new(store.clone(), TokenAuth::new(ADMIN, store.clone()));
    let token = {
        let r = call(
            &api,
            Method::POST,
            "/registry/register",
            ADMIN,
            r#"{"workspace_id": "ws-1", "url": "http://127.0.0.1:9/a"}"#,
        )
        .await;
        let v: Value = serde_json::from_slice(&r.1).unwrap();
        v["token"].as_str().unwrap().to_owned()
    };
    let limits = r#"{"budget_limits": {"hourly": 500, "monthly": 9000}}"#;
    call(
        &api,
        Method::PATCH,
        "/workspaces/ws-1/budget",
        ADMIN,
        limits,
    )
    .await;
    call(
        &api,
        Method::POST,
        "/registry/heartbeat",
        ADMIN,
        r#"{"workspace_id": "ws-1", "monthly_spend": 120, "seq": 5}"#,
    )
    .await;
    Api { api, store, token }
}

async fn call(
    api: &BudgetApi,
    method: Method,
    uri: &str,
    bearer: &str,
    body: &str,
) -> (StatusCode, Bytes) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {bearer}"))
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let res = api.clone().oneshot(req).await.unwrap();
    let status = res.status();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

/// Everything a rejected request must leave as it was: the status, and the previous report
/// (seen through the delta the next known report records).
async fn snapshot(a: &Api) -> String {
    let ws = WorkspaceId::new("ws-1").unwrap();
    format!("{:?}", a.store.status(&ws).await.unwrap())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn patch_bodies_never_5xx_and_rejections_change_nothing() {
    let rt = rt();
    let a = rt.block_on(api());
    runner("patch_bodies", 400)
        .run(&body_text(), |body| {
            rt.block_on(async {
                let before = snapshot(&a).await;
                let (status, bytes) = call(
                    &a.api,
                    Method::PATCH,
                    "/workspaces/ws-1/budget",
                    ADMIN,
                    &body,
                )
                .await;
                prop_assert!(
                    status == StatusCode::OK || status == StatusCode::BAD_REQUEST,
                    "{status} for {body}"
                );
                let answer: Value = serde_json::from_slice(&bytes).expect("a JSON answer");
                if status == StatusCode::BAD_REQUEST {
                    prop_assert!(answer["error"].is_string());
                    prop_assert_eq!(snapshot(&a).await, before, "changed by a rejected {}", body);
                }
                Ok(())
            })
        })
        .unwrap();
}

#[test]
fn heartbeat_bodies_never_5xx_and_rejections_change_nothing() {
    let rt = rt();
    let a = rt.block_on(api());
    runner("heartbeat_bodies", 400)
        .run(&body_text(), |body| {
            rt.block_on(async {
                let before = snapshot(&a).await;
                let (status, bytes) =
                    call(&a.api, Method::POST, "/registry/heartbeat", &a.token, &body).await;
                prop_assert!(
                    matches!(status.as_u16(), 200 | 400 | 403 | 404),
                    "{status} for {body}"
                );
                let answer: Value = serde_json::from_slice(&bytes).expect("a JSON answer");
                if status != StatusCode::OK {
                    prop_assert!(answer["error"].is_string());
                    prop_assert_eq!(snapshot(&a).await, before, "changed by a rejected {}", body);
                }
                Ok(())
            })
        })
        .unwrap();
}

/// Path segments: unicode, very long, percent-encoded, dot segments.
fn path_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._~-]{0,80}",
        "[a-z]{300,400}",
        "(%[0-9a-fA-F]{2}){1,12}",
        prop::sample::select(
            &[
                ".",
                "..",
                "%2e%2e",
                "%2F",
                "%00",
                "%ff%fe",
                "ws-1",
                "%C3%A9t%C3%A9"
            ][..]
        )
        .prop_map(str::to_owned),
        "\\PC{1,12}".prop_map(|s| { s.bytes().map(|b| format!("%{b:02X}")).collect::<String>() }),
    ]
}

#[test]
fn paths_and_headers_never_5xx() {
    let rt = rt();
    let a = rt.block_on(api());
    let strategy = (
        path_segment(),
        prop::sample::select(&["budget", "", "x/y", "budget/extra"][..]),
        prop::sample::select(&["GET", "PATCH", "DELETE", "POST", "PUT"][..]),
        prop_oneof![Just(ADMIN.to_owned()), Just(a.token.clone()), "[ -~]{0,40}",],
    );
    runner("paths_and_headers", 400)
        .run(&strategy, |(segment, tail, method, bearer)| {
            rt.block_on(async {
                let before = snapshot(&a).await;
                let uri = format!("/workspaces/{segment}/{tail}");
                let Ok(method) = method.parse::<Method>() else {
                    return Ok(());
                };
                let req = Request::builder()
                    .method(method.clone())
                    .uri(&uri)
                    .header("authorization", format!("Bearer {bearer}"))
                    .body(Full::new(Bytes::from_static(b"{}")));
                // Not every generated string is a valid header or URI: those never reach a server.
                let Ok(req) = req else { return Ok(()) };
                let res = a.api.clone().oneshot(req).await.unwrap();
                let status = res.status();
                prop_assert!(status.as_u16() < 500, "{status} for {method} {uri}");
                if !status.is_success() {
                    prop_assert_eq!(snapshot(&a).await, before);
                }
                Ok(())
            })
        })
        .unwrap();
}

/// What the Postgres store reads from any stored `jsonb` equals the pure, tolerant reader's
/// answer for the same value — and never fails.
#[test]
fn stored_limits_read_alike_in_postgres_and_in_memory() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (store, client) = rt.block_on(async {
        let pool = common::pg::migrated_pool().await;
        let client = pool.get().await.unwrap();
        let store = tower_budget::store::postgres::PgStore::new(pool);
        store
            .register(&WorkspaceId::new("w").unwrap())
            .await
            .unwrap();
        (store, client)
    });
    let stored = prop_oneof![
        json_value(),
        prop::collection::btree_map(
            prop::sample::select(&["hourly", "daily", "weekly", "monthly", "yearly"][..]),
            json_value(),
            0..5
        )
        .prop_map(|m| json!(m)),
    ];
    runner("stored_limits", 96)
        .run(&stored, |value| {
            rt.block_on(async {
                client
                    .execute(
                        "UPDATE workspaces SET budget_limits = $1 WHERE id = 'w'",
                        &[&value],
                    )
                    .await
                    .unwrap();
                let read = store.limits(&WorkspaceId::new("w").unwrap()).await;
                prop_assert_eq!(
                    read.unwrap(),
                    Limits::from_stored(&value),
                    "stored {}",
                    value
                );
                Ok(())
            })
        })
        .unwrap();
}

/// The resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A client that sends half a request and then nothing is cut off after the header read
/// timeout; thousands of idle connections (closed after the same timeout) and thousands of
/// unknown workspace ids leave the gateway answering at once, within bounded memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_idle_connections_and_unknown_ids_stay_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start(&[]);
    let pid = gw.child.id();

    // Slow clients: the connection is closed once the header read timeout (10 s) has passed,
    // on a new connection and on one that has been served a request already.
    let mut slow = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut served = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = [0u8; 512];
    served
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = served.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    let partial = b"GET /healthz HTTP/1.1\r\nHost: x\r\n";
    slow.write_all(partial).await.unwrap();
    served.write_all(partial).await.unwrap();
    let started = Instant::now();
    let closed = |mut conn: tokio::net::TcpStream| async move {
        let mut buf = [0u8; 512];
        let read = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf)).await;
        (read, started.elapsed())
    };
    let ((read, waited), (served_read, served_waited)) = tokio::join!(closed(slow), closed(served));
    for (read, waited) in [(read, waited), (served_read, served_waited)] {
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a slow client kept its connection for 20 s"
        );
        // Never early (the timer's deadline is taken from the clock); a little slack for the
        // time between the gateway's start of the read and this test's clock.
        assert!(
            waited >= Duration::from_millis(9_500),
            "closed after {waited:?}: too early"
        );
    }

    // Thousands of idle connections (and one that sends half the HTTP/2 preface).
    let before = rss_kib(pid);
    let mut idle = Vec::new();
    for _ in 0..2_000 {
        idle.push(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
    }
    let mut half_preface = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    half_preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let opened = Instant::now();
    let started = Instant::now();
    let health = gw.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(health.status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(2));

    // Thousands of unknown workspace ids, through the proxy and the API.
    let mut rng = fastrand::Rng::with_seed(common::seed("unknown_ids"));
    for i in 0..3_000 {
        let id: String = (0..24).map(|_| rng.alphanumeric()).collect();
        let (method, path, token) = if i % 2 == 0 {
            (Method::POST, format!("/workspaces/{id}/a2a"), None)
        } else {
            (Method::GET, format!("/workspaces/{id}/budget"), Some(ADMIN))
        };
        let r = gw.call_raw(method, &path, token, Some("{}"), &[]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
    }
    let after = rss_kib(pid);
    println!("gateway RSS: {before} KiB before, {after} KiB with 2,000 idle connections and 3,000 unknown ids");
    assert!(
        after.saturating_sub(before) < 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    // Connections that never send a request are closed after the header read timeout.
    idle.push(half_preface);
    for conn in idle.iter_mut().step_by(50) {
        let left = Duration::from_secs(25).saturating_sub(opened.elapsed());
        let read = tokio::time::timeout(left, conn.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "an idle connection still open after {:?}",
            opened.elapsed()
        );
    }
    assert!(
        opened.elapsed() >= Duration::from_secs(5),
        "closed too early"
    );
}

/// Random paths below a workspace's proxy route: never a 5xx from the gateway itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_proxy_paths_never_5xx() {
    let agent = Agent::start().await;
    let gw = Gateway::start(&[]);
    let r = gw
        .call(
            Method::POST,
            "/registry/register",
            Some(ADMIN),
            Some(&json!({"workspace_id": "ws-1", "url": agent.url()})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let mut runner = runner("proxy_paths", 150);
    let rt = tokio::runtime::Handle::current();
    let strategy = prop::collection::vec(path_segment(), 1..5);
    tokio::task::block_in_place(|| {
        runner
            .run(&strategy, |segments| {
                let path = format!("/workspaces/ws-1/a2a/{}", segments.join("/"));
                if path.parse::<http::Uri>().is_err() {
                    return Ok(());
                }
                let status = rt
                    .block_on(gw.call_raw(Method::POST, &path, None, Some("{}"), &[]))
                    .status;
                prop_assert!(status.as_u16() < 500, "{status} for {path}");
                Ok(())
            })
            .unwrap();
    });
}
