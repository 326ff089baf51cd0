//! Replicas on one PostgreSQL (release builds of the example gateway, durable server settings):
//!
//! 1. **Propagation.** Three gateways with the default cache (30 s while the change listener
//!    is connected). For each kind of write — a limits PATCH, a heartbeat that crosses the limit,
//!    a token rotation, a DELETE — made through the first gateway, the time from the write's
//!    response to the moment each of the two others answers differently (each polls with calls
//!    back to back, so the figure includes up to one call's round trip). Then again for PATCH
//!    after every listen connection was terminated (`pg_terminate_backend`) and came back.
//! 2. **Statements.** One gateway, 10,000 registered workspaces, wrk sending JSON-RPC calls to
//!    workspaces chosen uniformly: database transactions per second (`pg_stat_database`, every
//!    store call on this path is one statement in its own transaction) with `--cache-ttl-ms
//!    1000` and with the default.
//!
//! `REPLICA_TRIALS` (default 100) trials per write kind; `REPLICA_LOAD_SECONDS` (default 30)
//! of measured load per configuration, after as long a warm-up.
//! Run with `scripts/bench --bench replicas`.

#[path = "../tests/common/agent.rs"]
#[allow(dead_code)]
mod agent;
#[path = "../tests/common/gateway.rs"]
#[allow(dead_code)]
mod gateway;
#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gateway::{Gateway, ADMIN};
use http::{Method, StatusCode};
use serde_json::json;

const WORKSPACES: usize = 10_000;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Polls `probe` until it returns `want`; the instant it first did.
async fn changed(
    gw: &Gateway,
    want: StatusCode,
    probe: impl AsyncFn(&Gateway) -> StatusCode,
) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if probe(gw).await == want {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "no change within 60 s");
    }
}

/// Both replicas' lag behind a write whose response arrived at `written`.
async fn lags(
    replicas: &[&Gateway],
    written: Instant,
    want: StatusCode,
    probe: impl AsyncFn(&Gateway) -> StatusCode + Clone,
) -> Vec<Duration> {
    let (b, c) = tokio::join!(
        changed(replicas[0], want, probe.clone()),
        changed(replicas[1], want, probe)
    );
    vec![b - written, c - written]
}

async fn rpc(gw: &Gateway, id: &str) -> StatusCode {
    gw.rpc(id).await.status
}

async fn patch(gw: &Gateway, id: &str, limits: serde_json::Value) {
    gw.patch_limits(id, limits).await
}

async fn get_budget(gw: &Gateway, id: &str, token: &str) -> StatusCode {
    gw.budget(id, token).await.status
}

/// Limits PATCH trials: the hourly limit toggles between 0 and none.
async fn patch_trials(a: &Gateway, others: &[&Gateway], id: &str, trials: u64) -> Vec<Duration> {
    let mut all = Vec::new();
    for trial in 0..trials {
        let (limit, want) = if trial % 2 == 0 {
            (json!(0), StatusCode::PAYMENT_REQUIRED)
        } else {
            (json!(null), StatusCode::OK)
        };
        patch(a, id, json!({ "hourly": limit })).await;
        let written = Instant::now();
        all.extend(lags(others, written, want, async |g| rpc(g, id).await).await);
    }
    all
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(kind: &str, mut lags: Vec<Duration>) {
    lags.sort();
    println!(
        "| {kind} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
        lags.len(),
        percentile(&lags, 0.5).as_secs_f64() * 1e3,
        percentile(&lags, 0.99).as_secs_f64() * 1e3,
        lags.last().unwrap().as_secs_f64() * 1e3,
    );
}

async fn propagation(gateways: &[Gateway], agent_url: &str, url: &str, trials: u64) {
    let a = &gateways[0];
    let others = [&gateways[1], &gateways[2]];
    gateway::until_listening(&[a, others[0], others[1]]).await;
    println!("| write through one gateway | samples (2 replicas × trials) | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");

    // PATCH: the limit toggles between 0 and none.
    let id = "lag-patch";
    a.register(id, agent_url).await;
    for gw in others {
        changed(gw, StatusCode::OK, async |g| rpc(g, id).await).await;
    }
    let patch_lags = patch_trials(a, &others, id, trials).await;
    report("limits PATCH", patch_lags);

    // Heartbeat: each trial lifts the limit above the spend (not measured), then one heartbeat
    // crosses it.
    let id = "lag-heartbeat";
    let token = a.register(id, agent_url).await;
    let mut spend = 0;
    let mut heartbeat_lags = Vec::new();
    for _ in 0..trials {
        patch(a, id, json!({ "hourly": spend + 50 })).await;
        lags(&others, Instant::now(), StatusCode::OK, async |g| {
            rpc(g, id).await
        })
        .await;
        spend += 100;
        let r = a
            .call(
                Method::POST,
                "/registry/heartbeat",
                Some(&token),
                Some(&json!({"workspace_id": id, "monthly_spend": spend})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        let written = Instant::now();
        heartbeat_lags.extend(
            lags(&others, written, StatusCode::PAYMENT_REQUIRED, async |g| {
                rpc(g, id).await
            })
            .await,
        );
    }
    report("heartbeat crossing the limit", heartbeat_lags);

    // Token rotation: the old token, cached by both replicas, stops working.
    let id = "lag-rotation";
    let mut token = a.register(id, agent_url).await;
    let mut rotation_lags = Vec::new();
    for _ in 0..trials {
        for gw in others {
            assert_eq!(get_budget(gw, id, &token).await, StatusCode::OK);
        }
        let old = token.clone();
        token = a.register(id, agent_url).await;
        let written = Instant::now();
        rotation_lags.extend(
            lags(&others, written, StatusCode::FORBIDDEN, async |g| {
                get_budget(g, id, &old).await
            })
            .await,
        );
    }
    report("token rotation (old token refused)", rotation_lags);

    // DELETE: registered again before each trial (not measured).
    let id = "lag-delete";
    let mut delete_lags = Vec::new();
    for _ in 0..trials {
        a.register(id, agent_url).await;
        lags(&others, Instant::now(), StatusCode::OK, async |g| {
            rpc(g, id).await
        })
        .await;
        assert_eq!(a.delete_workspace(id).await.status, StatusCode::OK);
        let written = Instant::now();
        delete_lags.extend(
            lags(&others, written, StatusCode::NOT_FOUND, async |g| {
                rpc(g, id).await
            })
            .await,
        );
    }
    report("DELETE", delete_lags);

    // Every listen connection terminated; once all are back, PATCH again.
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let killed = Instant::now();
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'tower-budget-listen'",
            &[],
        )
        .await
        .unwrap();
    drop(client);
    let _ = conn.await;
    // The processes notice at once (the server closes the socket); wait until all are back.
    tokio::time::sleep(Duration::from_millis(50)).await;
    gateway::until_listening(&[a, others[0], others[1]]).await;
    println!(
        "\n(listen connections terminated; all three reconnected within {:.0} ms)\n",
        killed.elapsed().as_secs_f64() * 1e3
    );
    let id = "lag-patch";
    let after = patch_trials(a, &others, id, trials).await;
    report(
        "limits PATCH, after the listeners were terminated and came back",
        after,
    );
}

/// Transactions the database has committed or rolled back so far. Sessions publish their
/// counts at most once a second: the figure is read after a pause.
async fn transactions(url: &str) -> i64 {
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg::admin_query_i64_on(
        url,
        "SELECT (xact_commit + xact_rollback)::BIGINT FROM pg_stat_database WHERE datname = current_database()",
    )
    .await
}

fn wrk(url: &str, script: &Path, seconds: u64) -> (f64, String) {
    let out = Command::new("wrk")
        .args(["-t2", "-c32", &format!("-d{seconds}s"), "--latency", "-s"])
        .arg(script)
        .arg(url)
        .output()
        .expect("run wrk (scripts/bench installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN);
    (rps, text)
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let binary = gateway::release_build(&root.join("target"));
    let trials = setting("REPLICA_TRIALS", 100);
    let seconds = setting("REPLICA_LOAD_SECONDS", 30);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = pg::Server::start();
    let url = server.url();
    let agent = rt.block_on(agent::Agent::start());
    let start = |extra: &[&str]| {
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--admin-token",
            ADMIN,
            "--database-url",
            &url,
        ];
        args.extend_from_slice(extra);
        Gateway::start_binary(&binary, &args, &[])
    };

    println!("\n## Propagation: three gateways, default cache (30 s while listening), {trials} trials per kind\n");
    let gateways: Vec<Gateway> = (0..3).map(|_| start(&[])).collect();
    rt.block_on(propagation(&gateways, &agent.url(), &url, trials));
    drop(gateways);

    println!("\n## Statements for the same traffic: {WORKSPACES} workspaces, uniform calls, wrk 2×32, {seconds} s after {seconds} s of warm-up\n");
    rt.block_on(pg::admin_execute_on(
        &url,
        &format!(
            "INSERT INTO workspaces (id, agent_url) SELECT 'load-' || g, '{}' FROM generate_series(1, {WORKSPACES}) g ON CONFLICT DO NOTHING",
            agent.url()
        ),
    ));
    let script = root.join("target/wrk-uniform-workspaces.lua");
    std::fs::write(
        &script,
        format!(
            r#"wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{{"jsonrpc":"2.0","id":"1","method":"SendMessage","params":{{"message":{{"messageId":"m","role":"ROLE_USER","parts":[{{"text":"ping"}}]}}}}}}'
local n = 0
request = function()
  n = n + 1
  local id = math.random(1, {WORKSPACES})
  return wrk.format(nil, "/workspaces/load-" .. id .. "/a2a")
end
"#
        ),
    )
    .unwrap();
    println!("| cache | requests/s | transactions/s | transactions per request | p50 | p99 |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut per_request = Vec::new();
    for (label, extra) in [
        (
            "1 s TTL (`--cache-ttl-ms 1000`)",
            vec!["--cache-ttl-ms", "1000"],
        ),
        ("default: 30 s while listening", vec![]),
    ] {
        let gw = start(&extra);
        rt.block_on(gateway::until_listening(&[&gw]));
        let target = gw.url("/");
        wrk(&target, &script, seconds);
        let before = rt.block_on(transactions(&url));
        let (rps, text) = wrk(&target, &script, seconds);
        let after = rt.block_on(transactions(&url));
        let tps = (after - before) as f64 / seconds as f64;
        let latency = |label: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(label))
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("?")
                .to_owned()
        };
        per_request.push(tps / rps);
        println!(
            "| {label} | {rps:.0} | {tps:.0} | {:.3} | {} | {} |",
            tps / rps,
            latency("50%"),
            latency("99%")
        );
    }
    println!(
        "\nreduction in transactions per request: {:.1}×",
        per_request[0] / per_request[1]
    );
}
