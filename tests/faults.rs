//! The fault suite: the real gateway binary on a real PostgreSQL, under bounded loopback load,
//! while the database hangs, is cut off, is stopped and restarted, has its sessions terminated,
//! or has a table locked — and one gateway runs hours ahead under libfaketime.
//!
//! For each fault: every proxied call is answered; the added latency stays within the check
//! timeout plus a margin (and near nothing once the breaker is open); a heartbeat during the
//! outage gets a clear answer in bounded time and the agent's next cumulative report reconciles
//! the spend exactly; enforcement is back within the cache TTL plus the breaker's cool-down.
//!
//! `FAULT_SECONDS` (default 3) sets how long each fault lasts; the figures are printed (run with
//! `--nocapture`) and RELIABILITY.md quotes them.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::agent::Agent;
use common::gateway::{Gateway, ADMIN};
use common::pg::Server;
use common::relay::{Fault, Relay};
use http::{Method, StatusCode};
use serde_json::{json, Value};

const CHECK_TIMEOUT_MS: u64 = 100;
const CACHE_TTL_MS: u64 = 500;
/// The layer's default breaker cool-down.
const COOL_DOWN: Duration = Duration::from_secs(5);
/// Slack for a debug build on a shared two-core machine.
const MARGIN: Duration = Duration::from_millis(150);
const CONCURRENCY: usize = 4;

/// The faults run one at a time: their latency bounds mean nothing while another fault's load
/// shares the two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn fault_seconds() -> Duration {
    let secs = std::env::var("FAULT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs)
}

/// A gateway on a schema of its own, reached through a relay; three workspaces: `load` (no
/// limits, takes the traffic), `over` (hourly limit 100, spend 150: must be refused), `rec`
/// (its agent's heartbeats are reconciled).
struct Rig {
    relay: Relay,
    gw: Gateway,
    _agent: Agent,
    app_name: String,
    tokens: std::collections::HashMap<&'static str, String>,
}

impl Rig {
    async fn start(database_url: &str, upstream: std::net::SocketAddr) -> Rig {
        let schema = common::pg::fresh_schema_on(database_url).await;
        let relay = Relay::start(upstream).await;
        let app_name = format!("gw_{schema}");
        let url = format!(
            "{}?options=-csearch_path%3D{schema}&application_name={app_name}",
            relay.url_for(database_url)
        );
        let gw = Gateway::start(&[
            "--database-url",
            &url,
            "--check-timeout-ms",
            &CHECK_TIMEOUT_MS.to_string(),
            "--cache-ttl-ms",
            &CACHE_TTL_MS.to_string(),
        ]);
        let agent = Agent::start().await;
        let mut tokens = std::collections::HashMap::new();
        for id in ["load", "over", "rec"] {
            let r = gw
                .call(
                    Method::POST,
                    "/registry/register",
                    Some(ADMIN),
                    Some(&json!({"workspace_id": id, "url": agent.url()})),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK);
            tokens.insert(id, r.json["token"].as_str().unwrap().to_owned());
        }
        let r = gw
            .call(
                Method::PATCH,
                "/workspaces/over/budget",
                Some(ADMIN),
                Some(&json!({"budget_limits": {"hourly": 100}})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        let rig = Rig {
            relay,
            gw,
            _agent: agent,
            app_name,
            tokens,
        };
        assert_eq!(rig.heartbeat("over", 150).await.status, StatusCode::OK);
        assert_eq!(rig.heartbeat("rec", 100).await.status, StatusCode::OK);
        assert_eq!(rig.rpc("over").await, StatusCode::PAYMENT_REQUIRED);
        rig
    }

    async fn rpc(&self, id: &str) -> StatusCode {
        let body = r#"{"jsonrpc":"2.0","id":"1","method":"SendMessage","params":{"message":{"messageId":"m","role":"ROLE_USER","parts":[{"text":"hi"}]}}}"#;
        self.gw
            .call_raw(
                Method::POST,
                &format!("/workspaces/{id}/a2a"),
                None,
                Some(body),
                &[],
            )
            .await
            .status
    }

    async fn heartbeat(&self, id: &str, cumulative: i64) -> common::gateway::Reply {
        self.gw
            .call(
                Method::POST,
                "/registry/heartbeat",
                Some(&self.tokens[id]),
                Some(&json!({"workspace_id": id, "monthly_spend": cumulative})),
            )
            .await
    }

    async fn hourly_spend(&self, id: &str) -> Value {
        let r = self.gw.budget(id, ADMIN).await;
        r.json["periods"]["hourly"]["spend"].clone()
    }
}

/// Latency of each call, with its status, and when it started relative to the load's start.
struct Calls(Vec<(Duration, Duration, StatusCode)>);

impl Calls {
    fn percentile(&self, from: Duration, p: f64) -> Duration {
        let mut l: Vec<Duration> = self
            .0
            .iter()
            .filter(|(at, _, _)| *at >= from)
            .map(|(_, d, _)| *d)
            .collect();
        assert!(!l.is_empty(), "no calls after {from:?}");
        l.sort();
        l[((l.len() as f64 - 1.0) * p).round() as usize]
    }
}

/// `CONCURRENCY` clients calling `load` back to back for `length`.
async fn load(rig: &Arc<Rig>, length: Duration) -> Calls {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let rig = rig.clone();
        tasks.push(tokio::spawn(async move {
            let mut calls = Vec::new();
            while start.elapsed() < length {
                let at = start.elapsed();
                let began = Instant::now();
                let status = rig.rpc("load").await;
                calls.push((at, began.elapsed(), status));
            }
            calls
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    Calls(all)
}

/// Applies a fault for `fault_seconds()`, under load, with one heartbeat of `rec` during it;
/// then heals it and checks recovery and reconciliation. Returns the figures line.
async fn under_fault(
    name: &str,
    rig: Arc<Rig>,
    apply: impl FnOnce(&Rig),
    heal: impl FnOnce(&Rig),
) -> String {
    let _serial = SERIAL.lock().await;
    let before = load(&rig, Duration::from_secs(1)).await;
    assert!(before.0.iter().all(|(_, _, s)| *s == StatusCode::OK));
    let base_p50 = before.percentile(Duration::ZERO, 0.5);
    let base_p95 = before.percentile(Duration::ZERO, 0.95);

    apply(&rig);
    let length = fault_seconds();
    let during = tokio::spawn({
        let rig = rig.clone();
        async move { load(&rig, length).await }
    });
    // A heartbeat during the outage: answered in bounded time (503 where the store cannot take it).
    let hb_started = Instant::now();
    // The loaded workspace reports too: its write must not cost its calls the last known URL.
    let (hb, _) = tokio::join!(rig.heartbeat("rec", 250), rig.heartbeat("load", 1));
    let hb_took = hb_started.elapsed();
    assert!(
        matches!(hb.status, StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE),
        "{name}: heartbeat {:?} {:?}",
        hb.status,
        hb.json
    );
    assert!(
        hb_took < Duration::from_secs(7),
        "{name}: heartbeat took {hb_took:?}"
    );
    let during = during.await.unwrap();
    heal(&rig);

    // Every call answered, and let through (fail-open).
    let answered = during.0.len();
    let refused: Vec<_> = during
        .0
        .iter()
        .filter(|(_, _, s)| *s != StatusCode::OK)
        .collect();
    assert!(
        refused.is_empty(),
        "{name}: {} calls not 200: {:?}",
        refused.len(),
        &refused[..refused.len().min(5)]
    );
    let p95 = during.percentile(Duration::ZERO, 0.95);
    let p99 = during.percentile(Duration::ZERO, 0.99);
    let max = during.0.iter().map(|(_, d, _)| *d).max().unwrap();
    let bound = Duration::from_millis(CHECK_TIMEOUT_MS) + MARGIN;
    assert!(
        p95.saturating_sub(base_p50) <= bound,
        "{name}: p95 {p95:?} vs base p50 {base_p50:?}"
    );
    // Past the first second the breaker is open (or the fault is absorbed): calls pay nearly
    // nothing over the baseline.
    let late_p95 = during.percentile(Duration::from_secs(1), 0.95);

    // Enforcement back within the cache TTL plus the breaker's cool-down.
    let healed = Instant::now();
    let deadline =
        healed + Duration::from_millis(CACHE_TTL_MS) + COOL_DOWN + Duration::from_secs(5);
    loop {
        if rig.rpc("over").await == StatusCode::PAYMENT_REQUIRED {
            break;
        }
        assert!(Instant::now() < deadline, "{name}: enforcement not back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovery = healed.elapsed();

    // The agent's next cumulative report reconciles exactly: no spend lost, none counted twice.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = rig.heartbeat("rec", 400).await;
        if r.status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: heartbeats not back: {:?}",
            r.json
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        rig.hourly_spend("rec").await,
        400,
        "{name}: spend reconciled"
    );

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let line = format!(
        "| {name} | {answered} | 0 | +{:.1} ms | +{:.1} ms | +{:.1} ms | {:.1} ms | {} in {:.2} s | {:.2} s | 400 / 400 |",
        ms(p95.saturating_sub(base_p50)),
        ms(p99.saturating_sub(base_p50)),
        ms(late_p95.saturating_sub(base_p50)),
        ms(max),
        hb.status.as_u16(),
        hb_took.as_secs_f64(),
        recovery.as_secs_f64(),
    );
    println!(
        "FAULT {line}   (baseline p50 {:.1} ms, p95 {:.1} ms)",
        ms(base_p50),
        ms(base_p95)
    );
    assert!(
        late_p95.saturating_sub(base_p95) <= Duration::from_millis(50),
        "{name}: once absorbed, p95 {late_p95:?} vs baseline p95 {base_p95:?}"
    );
    line
}

fn shared_server() -> (String, std::net::SocketAddr) {
    let url = common::pg::database_url();
    let hostport = url.split_once('@').unwrap().1.split('/').next().unwrap();
    let addr = std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .unwrap()
        .next()
        .unwrap();
    (url, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_hangs() {
    let (url, addr) = shared_server();
    let rig = Arc::new(Rig::start(&url, addr).await);
    under_fault(
        "database hangs (accepts, never answers)",
        rig,
        |r| r.relay.set(Fault::Hang),
        |r| r.relay.set(Fault::None),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_is_cut_off() {
    let (url, addr) = shared_server();
    let rig = Arc::new(Rig::start(&url, addr).await);
    under_fault(
        "connections cut, new ones refused",
        rig,
        |r| r.relay.set(Fault::Cut),
        |r| r.relay.set(Fault::None),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_is_slow() {
    let (url, addr) = shared_server();
    let rig = Arc::new(Rig::start(&url, addr).await);
    under_fault(
        "every packet delayed 300 ms",
        rig,
        |r| r.relay.set(Fault::Slow(Duration::from_millis(300))),
        |r| r.relay.set(Fault::None),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_stops_and_restarts() {
    let server = Arc::new(tokio::task::spawn_blocking(Server::start).await.unwrap());
    let rig = Arc::new(Rig::start(&server.url(), server.addr()).await);
    let (stop, start) = (server.clone(), server.clone());
    under_fault(
        "server stopped, then started again",
        rig,
        move |_| stop.stop(),
        move |_| start.start_again(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_sessions_are_terminated() {
    let (url, addr) = shared_server();
    let rig = Arc::new(Rig::start(&url, addr).await);
    let app = rig.app_name.clone();
    // Terminate the gateway's sessions several times during the fault.
    let killer = tokio::spawn(async move {
        let end = Instant::now() + fault_seconds();
        let mut terminated = 0;
        while Instant::now() < end {
            let sql = format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{app}'"
            );
            terminated += common::pg::admin_query_i64(&sql).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        terminated
    });
    let line = under_fault(
        "pool sessions terminated (pg_terminate_backend)",
        rig,
        |_| {},
        |_| {},
    )
    .await;
    let terminated = killer.await.unwrap();
    assert!(terminated > 0, "terminated sessions: {terminated}");
    println!("{line}: {terminated} sessions terminated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_is_locked_for_seconds() {
    let (url, addr) = shared_server();
    let rig = Arc::new(Rig::start(&url, addr).await);
    let schema = rig.app_name.trim_start_matches("gw_").to_owned();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
    let locker = tokio::spawn(async move {
        let (client, conn) =
            tokio_postgres::connect(&common::pg::database_url(), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(conn);
        go_rx.await.unwrap();
        client
            .batch_execute(&format!(
                "BEGIN; LOCK TABLE {schema}.workspaces IN ACCESS EXCLUSIVE MODE"
            ))
            .await
            .unwrap();
        let _ = locked_tx.send(());
        tokio::time::sleep(fault_seconds()).await;
        client.batch_execute("COMMIT").await.unwrap();
    });
    under_fault(
        "workspaces table locked (ACCESS EXCLUSIVE)",
        rig,
        move |_| {
            // The lock is held before the load starts.
            go_tx.send(()).unwrap();
            block_on(locked_rx);
        },
        |_| {},
    )
    .await;
    locker.await.unwrap();
}

fn block_on(rx: tokio::sync::oneshot::Receiver<()>) {
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async {
            rx.await.unwrap();
        })
    });
}

/// SPEC §4: with Postgres, the database's clock stamps the ledger. A gateway whose clock runs
/// two hours ahead must not change what is counted or when (it used to stamp its heartbeats in
/// the future, so every replica counted 0 spend for two hours and let an over-budget
/// workspace through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_two_hours_ahead_changes_nothing() {
    let _serial = SERIAL.lock().await;
    let schema = common::pg::fresh_schema().await;
    let base = common::pg::database_url();
    let url = format!("{base}?options=-csearch_path%3D{schema}");
    // libfaketime preloaded into the gateway itself (the `faketime` wrapper would stand between
    // the test and the process it has to stop).
    let preload = libfaketime();
    let ahead = Gateway::start_raw(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-token",
            ADMIN,
            "--database-url",
            &url,
        ],
        &[
            ("LD_PRELOAD", preload.to_str().unwrap()),
            ("FAKETIME", "+2h"),
        ],
    );
    let normal = Gateway::start(&["--database-url", &url]);
    let agent = Agent::start().await;
    // The process's clock really is ahead.
    let date = ahead.call(Method::GET, "/healthz", None, None).await;
    let server_date = httpdate(&date.headers);
    let skew = server_date.signed_duration_since(chrono::Utc::now());
    assert!(
        skew > chrono::Duration::minutes(110),
        "faketime skew {skew}"
    );

    let r = ahead
        .call(
            Method::POST,
            "/registry/register",
            Some(ADMIN),
            Some(&json!({"workspace_id": "ws", "url": agent.url()})),
        )
        .await;
    let token = r.json["token"].as_str().unwrap().to_owned();
    ahead
        .call(
            Method::PATCH,
            "/workspaces/ws/budget",
            Some(ADMIN),
            Some(&json!({"budget_limits": {"hourly": 100}})),
        )
        .await;
    // Five times the hourly limit, reported through the fast gateway, then a little more
    // through the normal one.
    for (gw, cumulative) in [(&ahead, 500), (&normal, 520)] {
        let r = gw
            .call(
                Method::POST,
                "/registry/heartbeat",
                Some(&token),
                Some(&json!({"workspace_id": "ws", "monthly_spend": cumulative})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    }
    for gw in [&ahead, &normal] {
        let b = gw
            .call(Method::GET, "/workspaces/ws/budget", Some(ADMIN), None)
            .await;
        assert_eq!(b.json["periods"]["hourly"]["spend"], 520, "{:?}", b.json);
        let r = gw
            .call_raw(Method::POST, "/workspaces/ws/a2a", None, Some("{}"), &[])
            .await;
        assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED);
        let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((3000..=3600).contains(&wait), "retry-after {wait} s");
    }
}

fn httpdate(headers: &http::HeaderMap) -> chrono::DateTime<chrono::Utc> {
    let text = headers["date"].to_str().unwrap();
    chrono::DateTime::parse_from_rfc2822(&text.replace("GMT", "+0000"))
        .unwrap()
        .with_timezone(&chrono::Utc)
}

/// Debian's libfaketime (package `faketime`, installed by scripts/install-deps).
fn libfaketime() -> std::path::PathBuf {
    std::fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(Result::ok)
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.is_file())
        .expect("libfaketime not found: scripts/install-deps installs the faketime package")
}
