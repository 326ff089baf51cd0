//! Load through the example gateway with wrk (Debian's package), one run:
//!
//! 1. the test agent called directly (the floor),
//! 2. the gateway built with `bench-bypass-budget` (the same proxy code, no budget layer),
//! 3. the gateway as shipped: budget layer on, Postgres store, decision cache on (1 s).
//!
//! Release builds; 2 wrk threads, 32 connections, 10 s each after a 2 s warm-up, JSON-RPC
//! `SendMessage` POSTs; three rounds in rotating order, medians reported. Prints a Markdown table
//! (throughput and latency percentiles, ratios).
//! Run with `scripts/bench --bench gateway_load`.

#[path = "../tests/common/agent.rs"]
#[allow(dead_code)]
mod agent;
#[path = "../tests/common/gateway.rs"]
#[allow(dead_code)]
mod gateway;
#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::path::{Path, PathBuf};
use std::process::Command;

const DURATION: &str = "8s";
const WARM_UP: &str = "2s";
const CONNECTIONS: &str = "32";
const THREADS: &str = "2";
const ROUNDS: usize = 5;

struct Run {
    name: &'static str,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU time (user + system) the gateway process spent per request; NaN for the direct run.
    cpu_us: f64,
}

/// user + system CPU ticks of `pid` so far (fields 14 and 15 of /proc/PID/stat).
fn cpu_ticks(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after the name, field 3 of the man page is index 0: utime is 14 → 11, stime 15 → 12
    fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()
}

fn ticks_per_second() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn build(target_dir: &Path, features: &[&str]) -> PathBuf {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--release", "--quiet", "--example", "gateway"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target_dir);
    for f in features {
        cmd.args(["--features", f]);
    }
    assert!(cmd.status().unwrap().success(), "build {features:?}");
    target_dir.join("release/examples/gateway")
}

fn wrk(url: &str, script: &Path, duration: &str) -> String {
    let out = Command::new("wrk")
        .args([
            "-t",
            THREADS,
            "-c",
            CONNECTIONS,
            "-d",
            duration,
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .expect("wrk (apt-get install wrk)");
    assert!(
        out.status.success(),
        "wrk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// "50%  1.23ms" → milliseconds.
fn percentile(report: &str, label: &str) -> f64 {
    let line = report
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .expect(label);
    let value = line.split_whitespace().nth(1).unwrap();
    let (number, unit) = value.split_at(value.find(|c: char| c.is_alphabetic()).unwrap());
    let n: f64 = number.parse().unwrap();
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        other => panic!("unit {other}"),
    }
}

fn measure(name: &'static str, url: &str, script: &Path, pid: Option<u32>) -> Run {
    wrk(url, script, WARM_UP);
    let before = pid.map(cpu_ticks);
    let report = wrk(url, script, DURATION);
    let spent = pid
        .zip(before)
        .map(|(p, b)| (cpu_ticks(p) - b) / ticks_per_second());
    assert!(
        !report.contains("Non-2xx"),
        "{name}: errors under load:\n{report}"
    );
    let rps = report
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .expect("Requests/sec")
        .trim()
        .parse()
        .unwrap();
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

/// The median of each figure over the rounds.
fn median(mut runs: Vec<Run>) -> Run {
    let mid = runs.len() / 2;
    let pick = |runs: &mut Vec<Run>, f: fn(&Run) -> f64| {
        runs.sort_by(|a, b| f(a).total_cmp(&f(b)));
        f(&runs[mid])
    };
    let rps = pick(&mut runs, |r| r.rps);
    let p50_ms = pick(&mut runs, |r| r.p50_ms);
    let p99_ms = pick(&mut runs, |r| r.p99_ms);
    let cpu_us = pick(&mut runs, |r| r.cpu_us);
    Run {
        name: runs[0].name,
        rps,
        p50_ms,
        p99_ms,
        cpu_us,
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing to filter here.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = build(&root.join("target"), &[]);
    let bypass = build(&root.join("target/bypass"), &["bench-bypass-budget"]);
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
    for binary in [&bypass, &shipped] {
        let gw = gateway::Gateway::start_binary(
            binary,
            &[
                "--listen",
                "127.0.0.1:0",
                "--admin-token",
                gateway::ADMIN,
                "--database-url",
                &db,
            ],
            &[],
        );
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
    // The machine is shared and noisy: the three targets take turns, ROUNDS times, in a rotating
    // order, and each figure is the median of its rounds.
    let targets: [(&'static str, String, Option<u32>); 3] = [
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
    ];
    let mut samples: Vec<Vec<Run>> = (0..targets.len()).map(|_| Vec::new()).collect();
    for round in 0..ROUNDS {
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            samples[i].push(measure(targets[i].0, &targets[i].1, &script, targets[i].2));
        }
    }
    let runs: Vec<Run> = samples.into_iter().map(median).collect();
    let (direct, bare, layered) = (&runs[0], &runs[1], &runs[2]);
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
    println!(
        "BudgetLayer throughput / same proxy without it: {:.3}×",
        layered.rps / bare.rps
    );
    println!(
        "BudgetLayer CPU per request: {:+.1} µs ({:.3}× the proxy without it)",
        layered.cpu_us - bare.cpu_us,
        layered.cpu_us / bare.cpu_us
    );
    println!(
        "gateway + layer vs agent direct: p50 +{:.2} ms, p99 +{:.2} ms (throughput {:.2}×)",
        layered.p50_ms - direct.p50_ms,
        layered.p99_ms - direct.p99_ms,
        layered.rps / direct.rps
    );
}
