//! Load through the example gateway with wrk (Debian's package), one run:
//!
//! 1. the test agent called directly (the floor),
//! 2. the same gateway without the budget layer: this bench binary serves the gateway's own
//!    router and proxy (`examples/gateway/app.rs`, `proxy.rs`) with nothing in front of the proxy
//!    — the baseline exists only here, never in a build of the gateway,
//! 3. the gateway as shipped: budget layer on, Postgres store, decision cache on (1 s).
//!
//! Release builds; 2 wrk threads, 32 connections, JSON-RPC `SendMessage` POSTs. The machine is
//! shared and noisy, so the run is many short rounds: in each, every target gets a 1 s warm-up
//! and a measured stretch, in an order that rotates from round to round, and the layer's figure
//! is the ratio to the baseline *of the same round*; the report gives the median of those
//! paired ratios with their spread, and the median of each target's figures.
//! `GATEWAY_LOAD_ROUNDS` (default 10) and `GATEWAY_LOAD_SECONDS` (default 5) change the length.
//! Run with `scripts/bench --bench gateway_load`.

#[path = "../tests/common/agent.rs"]
#[allow(dead_code)]
mod agent;
#[path = "../examples/gateway/agents.rs"]
#[allow(dead_code)]
mod agents;
#[path = "../examples/gateway/allocator.rs"]
mod allocator;
#[path = "../examples/gateway/app.rs"]
#[allow(dead_code, unused_imports)]
mod app;
#[path = "../examples/gateway/card.rs"]
#[allow(dead_code, unused_imports)]
mod card;
#[path = "../examples/gateway/coarse_timer.rs"]
#[allow(unused_imports)] // its tests are not built in a bench
mod coarse_timer;
#[path = "common/cpu.rs"]
#[allow(dead_code)]
mod cpu;
#[path = "../tests/common/gateway.rs"]
#[allow(dead_code)]
mod gateway;
#[path = "../examples/gateway/http1.rs"]
#[allow(unused_imports, dead_code)] // its tests are not run in a bench
mod http1;
#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;
#[path = "../examples/gateway/proxy.rs"]
#[allow(dead_code, unused_imports)]
mod proxy;
#[path = "common/wrk.rs"]
#[allow(dead_code)]
mod wrk;

use std::path::Path;

use cpu::{cpu_ticks, ticks_per_second};
use wrk::{percentile, requests_per_second, setting, wrk};

const WARM_UP: &str = "1s";
struct Run {
    name: &'static str,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU time (user + system) the gateway process spent per request; NaN for the direct run.
    cpu_us: f64,
}

/// The baseline: this binary, run with `--serve-baseline [--database-url URL] [--listen ADDR]`,
/// serves the gateway's router and proxy with no budget layer in front of the proxy (the
/// in-process store without a database URL). `scripts/bench-instructions` uses it too.
fn serve_baseline(args: &[String]) {
    use tower_budget::api::{BudgetApi, TokenAuth};
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let database_url = flag("--database-url");
    let listen = flag("--listen").unwrap_or_else(|| "127.0.0.1:0".into());
    // Served as the gateway serves: a single-threaded runtime per core, a router and proxy per
    // thread, the same cache capacity.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .unwrap();
        // The same caching store (and change listener) the gateway gives its layer, for the API
        // and the proxy's lookups: the baseline differs from the gateway by the budget check alone.
        let backend = app::store(database_url.as_deref(), None, app::DEFAULT_CACHE_CAPACITY)
            .await
            .unwrap();
        let health = backend.health();
        let store = backend.store.clone();
        let api = BudgetApi::new(store.clone(), TokenAuth::new(gateway::ADMIN, store.clone()));
        let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
        let local = listener.local_addr().unwrap();
        let make_router = std::sync::Arc::new(move || {
            let proxy = proxy::Proxy::new(
                store.clone(),
                format!("http://{local}"),
                std::time::Duration::from_secs(300),
                std::time::Duration::from_millis(50),
            );
            app::router(proxy, api.clone(), metrics.clone(), health.clone())
        });
        println!("listening on http://{local} (baseline: no budget layer)");
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        app::serve_on_threads(listener, make_router, threads, std::future::pending()).await;
    });
}

fn measure(name: &'static str, url: &str, script: &Path, pid: Option<u32>, duration: &str) -> Run {
    wrk(url, script, WARM_UP);
    let before = pid.map(cpu_ticks);
    let report = wrk(url, script, duration);
    let spent = pid
        .zip(before)
        .map(|(p, b)| (cpu_ticks(p) - b) / ticks_per_second());
    assert!(
        !report.contains("Non-2xx"),
        "{name}: errors under load:\n{report}"
    );
    let rps = requests_per_second(&report);
    let requests: f64 = report
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .expect("request count")
        .parse()
        .unwrap();
    let cpu_us = spent.map_or(f64::NAN, |s| s * 1e6 / requests);
    Run {
        name,
        rps,
        p50_ms: percentile(&report, "50%"),
        p99_ms: percentile(&report, "99%"),
        cpu_us,
    }
}

/// The median of `values` (which it sorts), and the smallest and largest.
fn spread(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    let median = if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    };
    (median, values[0], values[values.len() - 1])
}

/// The geometric mean of `ratios` and a 95 % confidence interval for it (normal approximation on
/// the logarithms: rounds are independent, the noise multiplicative).
fn geometric_mean_ci(ratios: &[f64]) -> (f64, f64, f64) {
    let logs: Vec<f64> = ratios.iter().map(|r| r.ln()).collect();
    let n = logs.len() as f64;
    let mean = logs.iter().sum::<f64>() / n;
    let variance = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let half = 1.96 * (variance / n).sqrt();
    (mean.exp(), (mean - half).exp(), (mean + half).exp())
}

/// The median of each figure over the rounds.
fn median(runs: &[Run]) -> Run {
    let pick = |f: fn(&Run) -> f64| spread(&mut runs.iter().map(f).collect::<Vec<_>>()).0;
    Run {
        name: runs[0].name,
        rps: pick(|r| r.rps),
        p50_ms: pick(|r| r.p50_ms),
        p99_ms: pick(|r| r.p99_ms),
        cpu_us: pick(|r| r.cpu_us),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--serve-baseline") {
        return serve_baseline(&args);
    }
    // `cargo bench` passes --bench; nothing to filter here.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = gateway::release_build(&root.join("target"));
    let baseline = std::env::current_exe().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let agent = rt.block_on(agent::Agent::start());
    let script = root.join("target/wrk-send-message.lua");
    std::fs::write(
        &script,
        r#"wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"jsonrpc":"2.0","id":"1","method":"SendMessage","params":{"message":{"messageId":"m","role":"ROLE_USER","parts":[{"text":"ping"}]}}}'
"#,
    )
    .unwrap();

    let schema = rt.block_on(pg::fresh_schema());
    let base = pg::database_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let db = format!("{base}{sep}options=-csearch_path%3D{schema}");
    let mut gateways = Vec::new();
    // The baseline twice: the second copy measures the noise floor (an A/A comparison).
    for binary in [&baseline, &shipped, &baseline] {
        let args: Vec<&str> = if *binary == baseline {
            vec!["--serve-baseline", "--database-url", &db]
        } else {
            vec![
                "--listen",
                "127.0.0.1:0",
                "--admin-token",
                gateway::ADMIN,
                "--database-url",
                &db,
            ]
        };
        let gw = gateway::Gateway::start_binary(binary, &args, &[]);
        rt.block_on(async {
            let body = serde_json::json!({"workspace_id": "ws-1", "url": agent.url()});
            let r = gw
                .call(
                    http::Method::POST,
                    "/registry/register",
                    Some(gateway::ADMIN),
                    Some(&body),
                )
                .await;
            assert_eq!(r.status, 200);
            let limits = serde_json::json!({"budget_limits": {"hourly": 1_000_000_000}});
            gw.call(
                http::Method::PATCH,
                "/workspaces/ws-1/budget",
                Some(gateway::ADMIN),
                Some(&limits),
            )
            .await;
        });
        gateways.push(gw);
    }
    // The machine is shared and noisy: the three targets take turns, round after round, in a
    // rotating order; the layer is compared with the baseline of the same round.
    let targets: [(&'static str, String, Option<u32>); 4] = [
        ("agent, direct", format!("{}/", agent.url()), None),
        (
            "gateway, no budget layer",
            gateways[0].url("/workspaces/ws-1/a2a/"),
            Some(gateways[0].child.id()),
        ),
        (
            "gateway + BudgetLayer (Postgres, cache on)",
            gateways[1].url("/workspaces/ws-1/a2a/"),
            Some(gateways[1].child.id()),
        ),
        (
            "gateway, no budget layer, second process (A/A)",
            gateways[2].url("/workspaces/ws-1/a2a/"),
            Some(gateways[2].child.id()),
        ),
    ];
    let rounds = setting("GATEWAY_LOAD_ROUNDS", 10);
    let duration = format!("{}s", setting("GATEWAY_LOAD_SECONDS", 5));
    let mut samples: Vec<Vec<Run>> = (0..targets.len()).map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            let (name, url, pid) = &targets[i];
            samples[i].push(measure(name, url, &script, *pid, &duration));
        }
    }
    let ratios = |target: usize, f: fn(&Run) -> f64| -> Vec<f64> {
        samples[target]
            .iter()
            .zip(&samples[1])
            .map(|(other, bare)| f(other) / f(bare))
            .collect()
    };
    let paired = |target: usize, f: fn(&Run) -> f64| spread(&mut ratios(target, f));
    let listed: Vec<String> = ratios(2, |r| r.rps)
        .iter()
        .map(|r| format!("{r:.3}"))
        .collect();
    println!(
        "BudgetLayer / baseline throughput, round by round: {}",
        listed.join(" ")
    );
    let (mean, low, high) = geometric_mean_ci(&ratios(2, |r| r.rps));
    println!(
        "  geometric mean {mean:.3}×, 95% confidence interval {low:.3}–{high:.3} (normal approximation on log ratios)"
    );
    println!();
    let runs: Vec<Run> = samples.iter().map(|s| median(s)).collect();
    let (direct, layered) = (&runs[0], &runs[2]);
    println!("{rounds} rounds of {duration} per target; medians:");
    println!();
    println!("| target | requests/s | p50 | p99 | gateway CPU per request |");
    println!("|---|---:|---:|---:|---:|");
    for r in &runs {
        let cpu = if r.cpu_us.is_nan() {
            "—".to_owned()
        } else {
            format!("{:.1} µs", r.cpu_us)
        };
        println!(
            "| {} | {:.0} | {:.2} ms | {:.2} ms | {cpu} |",
            r.name, r.rps, r.p50_ms, r.p99_ms
        );
    }
    println!();
    for (target, what) in [
        (2, "BudgetLayer / same proxy without it"),
        (
            3,
            "noise floor: proxy without the layer / itself in another process",
        ),
    ] {
        for (figure, f) in [
            ("throughput", (|r: &Run| r.rps) as fn(&Run) -> f64),
            ("gateway CPU per request", |r: &Run| r.cpu_us),
        ] {
            let (median, low, high) = paired(target, f);
            println!(
                "{what}, {figure}, paired by round: median {median:.3}× (rounds: {low:.3}–{high:.3})"
            );
        }
    }
    println!(
        "gateway + layer vs agent direct: p50 +{:.2} ms, p99 +{:.2} ms (throughput {:.2}×)",
        layered.p50_ms - direct.p50_ms,
        layered.p99_ms - direct.p99_ms,
        layered.rps / direct.rps
    );
}
