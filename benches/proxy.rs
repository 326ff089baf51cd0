//! The gateway as a proxy, against nginx, on one upstream (issue #14). One run:
//!
//! 1. **Saturation**: wrk (2 threads, 32 connections, JSON-RPC `SendMessage` POSTs) against
//!    nginx as a reverse proxy (Debian's nginx-light, keep-alive to the upstream), the gateway as
//!    shipped (budget layer, Postgres store, limits set so every call is checked) and the
//!    upstream direct. The upstream is a second nginx answering a fixed JSON-RPC result, so
//!    the proxies are the only difference. Many short rounds in rotating order; ratios paired
//!    by round.
//! 2. **Latency at fixed rates**: half of nginx's median saturation rate, and 10,000 requests/s, from an open-loop
//!    generator in this process (`OpenLoop`, one thread, raw HTTP/1.1): request `i` is due at `t0 + i / rate` on
//!    connection `i mod 32`; a request whose connection is still busy when it is due counts
//!    from when it was due (no coordinated omission), one sent on time from when it was sent
//!    (the generator's own timer lateness is not the server's). Tokio's timer has 1 ms ticks,
//!    so requests leave in small bursts each millisecond rather than evenly spaced; a run with
//!    any failed request is void. p50 / p99 / p99.9 per target: `PROXY_ROUNDS` runs of
//!    `PROXY_SECONDS` per target in rotating order, medians, and the gateway's p99 over
//!    nginx's paired by round.
//! 3. **Scale**: 1,000,000 workspaces registered in Postgres (half with limits), the gateway
//!    restarted on them (start-up time), then wrk calls spread uniformly at random over N =
//!    10, 1,000 and 100,000 of them: throughput and p50 per N, and the gateway's RSS growth per
//!    active workspace.
//!
//! `PROXY_ROUNDS` (default 6), `PROXY_SECONDS` (default 5), `PROXY_SCALE=0` skips part 3,
//! `PROXY_SCALE_ONLY=1` runs part 3 alone, `PROXY_GATEWAY_ARGS` adds flags to its gateway.
//! Run with `scripts/bench --bench proxy`.

#[path = "common/cpu.rs"]
mod cpu;
#[path = "../tests/common/gateway.rs"]
#[allow(dead_code)]
mod gateway;
#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;
#[path = "common/wrk.rs"]
mod wrk;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pg::free_port;
use wrk::{percentile, requests_per_second, setting, wrk, CONNECTIONS};

/// The second fixed rate: the rate TensorZero quotes its gateway's p99 at.
const FIXED_RATE: f64 = 10_000.0;
const BODY: &str = r#"{"jsonrpc":"2.0","id":"1","method":"SendMessage","params":{"message":{"messageId":"m","role":"ROLE_USER","parts":[{"text":"ping"}]}}}"#;
const ANSWER: &str = r#"{"jsonrpc":"2.0","id":"1","result":{"kind":"message","messageId":"r","role":"agent","parts":[{"kind":"text","text":"pong"}]}}"#;

/// An nginx started by this process (master in the foreground, stopped by PID on drop).
struct Nginx {
    child: Child,
    port: u16,
}

impl Nginx {
    fn start(dir: &Path, name: &str, workers: usize, server: &str, extra_http: &str) -> Nginx {
        let port = free_port();
        let prefix = dir.join(name);
        std::fs::create_dir_all(&prefix).unwrap();
        let conf = prefix.join("nginx.conf");
        let p = prefix.display();
        std::fs::write(
            &conf,
            format!(
                "daemon off;
worker_processes {workers};
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {p}/body;
  proxy_temp_path {p}/proxy;
  fastcgi_temp_path {p}/fastcgi;
  uwsgi_temp_path {p}/uwsgi;
  scgi_temp_path {p}/scgi;
  keepalive_requests 1000000;
  {extra_http}
  server {{
    listen 127.0.0.1:{port};
    {server}
  }}
}}
"
            ),
        )
        .unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .spawn()
            .expect("nginx (apt-get install nginx-light)");
        // Owned by the guard first: a failed start still stops it.
        let nginx = Nginx { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx {name} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: graceful stop of this master and its workers.
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

struct Saturation {
    rps: f64,
    p50: f64,
    p99: f64,
    /// The proxy's CPU per request in µs, user and system (none for the upstream direct).
    cpu: Option<(f64, f64)>,
    /// The whole machine's busy CPU per request in µs: the proxy, wrk, the upstream and the
    /// kernel's network work for them, on both cores.
    machine: f64,
}

/// A wrk run against `url`; `proxy` are the processes whose CPU per request is measured.
fn saturate(name: &str, url: &str, script: &Path, seconds: usize, proxy: &[u32]) -> Saturation {
    wrk(url, script, "1s");
    let cpu = || {
        proxy
            .iter()
            .map(|p| cpu::cpu_ticks_split(*p))
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    let (before, machine_before) = (cpu(), cpu::machine_busy_ticks());
    let report = wrk(url, script, &format!("{seconds}s"));
    let (after, machine_after) = (cpu(), cpu::machine_busy_ticks());
    assert!(
        !report.contains("Non-2xx") && !report.contains("Socket errors"),
        "{name}: errors under load:\n{report}"
    );
    let rps = requests_per_second(&report);
    let done = wrk::requests(&report);
    let per_request = |ticks: f64| ticks / cpu::ticks_per_second() * 1e6 / done;
    Saturation {
        rps,
        p50: percentile(&report, "50%"),
        p99: percentile(&report, "99%"),
        cpu: (!proxy.is_empty()).then(|| {
            (
                per_request(after.0 - before.0),
                per_request(after.1 - before.1),
            )
        }),
        machine: per_request(machine_after - machine_before),
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// Latencies of an open-loop run, in microseconds, sorted.
struct OpenLoop {
    latencies: Vec<u64>,
    late_starts: usize,
    errors: usize,
}

impl OpenLoop {
    fn at(&self, q: f64) -> f64 {
        assert!(!self.latencies.is_empty(), "no request succeeded");
        let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
        self.latencies[i] as f64 / 1000.0
    }
}

/// `rate` requests per second for `seconds`, over `CONNECTIONS` keep-alive connections, from
/// one thread: requests are written as prebuilt bytes and responses read with just enough
/// parsing to find their end (`Content-Length` or chunked), so the generator takes little of
/// the 2 cores it shares with the servers it measures (a hyper client on a 2-thread runtime,
/// its first version, took about as much CPU per request as the gateway).
fn open_loop(url: &str, rate: f64, seconds: f64) -> OpenLoop {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let uri: http::Uri = url.parse().unwrap();
    rt.block_on(async move {
        let authority = uri.authority().unwrap().to_string();
        let request: &'static [u8] = format!(
            "POST {} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
            uri.path_and_query().map_or("/", |p| p.as_str()),
            BODY.len()
        )
        .into_bytes()
        .leak();
        let total = (rate * seconds) as usize;
        let interval = Duration::from_secs_f64(1.0 / rate);
        let start = tokio::time::Instant::now() + Duration::from_millis(50);
        let mut tasks = Vec::new();
        for c in 0..CONNECTIONS {
            let authority = authority.clone();
            tasks.push(tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut stream = tokio::net::TcpStream::connect(&authority).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let mut buf = Vec::with_capacity(4096);
                let mut out = (Vec::new(), 0usize, 0usize);
                let mut i = c;
                while i < total {
                    let due = start + interval * i as u32;
                    let now = tokio::time::Instant::now();
                    // Busy past the due time: the wait is the server's, counted from `due`.
                    let from = if now > due {
                        out.1 += 1;
                        due
                    } else {
                        tokio::time::sleep_until(due).await;
                        tokio::time::Instant::now()
                    };
                    let ok = stream.write_all(request).await.is_ok()
                        && read_response(&mut stream, &mut buf).await == Some(true);
                    if !ok {
                        out.2 += 1;
                        break;
                    }
                    out.0.push(from.elapsed().as_micros() as u64);
                    i += CONNECTIONS;
                }
                out
            }));
        }
        let mut result = OpenLoop {
            latencies: Vec::with_capacity(total),
            late_starts: 0,
            errors: 0,
        };
        for t in tasks {
            let (l, late, errors) = t.await.unwrap();
            result.latencies.extend(l);
            result.late_starts += late;
            result.errors += errors;
        }
        result.latencies.sort_unstable();
        result
    })
}

/// Reads one HTTP/1.1 response from `stream` (`buf` is scratch space): `Some(success)`, or
/// `None` when the connection failed or the response could not be parsed.
async fn read_response(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<bool> {
    use tokio::io::AsyncReadExt;
    buf.clear();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if stream.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let success = head.split(' ').nth(1)?.starts_with('2');
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    if let Some(length) = header("content-length") {
        let end = head_end + length.parse::<usize>().ok()?;
        while buf.len() < end {
            if stream.read_buf(buf).await.ok()? == 0 {
                return None;
            }
        }
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        // The last chunk and an empty trailer end it (this bench's bodies have no trailers).
        while !buf[head_end..].ends_with(b"0\r\n\r\n") {
            if stream.read_buf(buf).await.ok()? == 0 {
                return None;
            }
        }
    } else {
        return None;
    }
    Some(success)
}

/// `tower_budget_decisions_total{decision="failed_open"}` from the gateway's `/metrics`.
async fn failed_open(gw: &gateway::Gateway) -> u64 {
    let r = gw.call(http::Method::GET, "/metrics", None, None).await;
    String::from_utf8_lossy(&r.bytes)
        .lines()
        .find_map(|l| {
            l.strip_prefix("tower_budget_decisions_total{decision=\"failed_open\"} ")
                .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        })
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

fn post_script(dir: &Path) -> PathBuf {
    let script = dir.join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = '{BODY}'\n"
        ),
    )
    .unwrap();
    script
}

/// Calls spread uniformly at random over workspaces `ws-0` … `ws-{n-1}`.
fn spread_script(dir: &Path, n: usize) -> PathBuf {
    let script = dir.join(format!("spread-{n}.lua"));
    std::fs::write(
        &script,
        format!(
            "local body = '{BODY}'
local headers = {{[\"Content-Type\"] = \"application/json\"}}
request = function()
  return wrk.format(\"POST\", \"/workspaces/ws-\" .. math.random(0, {}) .. \"/a2a\", headers, body)
end
",
            n - 1
        ),
    )
    .unwrap();
    script
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rounds = setting("PROXY_ROUNDS", 6);
    let seconds = setting("PROXY_SECONDS", 5);
    let dir = root.join("target/proxy-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let shipped = gateway::release_build(&root.join("target"));
    let rt = tokio::runtime::Runtime::new().unwrap();

    let upstream = Nginx::start(
        &dir,
        "upstream",
        1,
        &format!("location / {{ default_type application/json; return 200 '{ANSWER}'; }}"),
        "",
    );
    let nginx = Nginx::start(
        &dir,
        "proxy",
        2,
        "location / { proxy_pass http://agent; proxy_http_version 1.1; proxy_set_header Connection \"\"; }",
        &format!(
            "upstream agent {{ server 127.0.0.1:{}; keepalive 64; }}",
            upstream.port
        ),
    );
    let agent_url = format!("http://127.0.0.1:{}/agent", upstream.port);

    let schema = rt.block_on(pg::fresh_schema());
    let base = pg::database_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let db = format!("{base}{sep}options=-csearch_path%3D{schema}");
    let gw = gateway::Gateway::start_binary(
        &shipped,
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
        gw.register("bench", &agent_url).await;
        gw.patch_limits(
            "bench",
            serde_json::json!({"hourly": 1_000_000_000, "monthly": 2_000_000_000}),
        )
        .await;
        let r = gw.rpc("bench").await;
        assert_eq!(r.status, http::StatusCode::OK, "{:?}", r.json);
    });

    if setting("PROXY_SCALE_ONLY", 0) == 1 {
        drop(gw);
        drop(nginx);
        scale(&rt, &shipped, &schema, &db, &dir, &agent_url, seconds);
        return;
    }
    let script = post_script(&dir);
    let targets = [
        ("upstream direct", agent_url.clone()),
        (
            "nginx proxy",
            format!("http://127.0.0.1:{}/workspaces/bench/a2a", nginx.port),
        ),
        (
            "gateway",
            format!("http://{}/workspaces/bench/a2a", gw.addr),
        ),
    ];
    // Whose CPU each target's rounds measure: nothing, nginx's workers, the gateway.
    let proxies = [
        Vec::new(),
        cpu::children(nginx.child.id()),
        vec![gw.child.id()],
    ];
    assert_eq!(proxies[1].len(), 2, "nginx's two workers");
    let mut sat: Vec<Vec<Saturation>> = targets.iter().map(|_| Vec::new()).collect();
    eprintln!("saturation: {rounds} rounds of {seconds} s per target");
    for round in 0..rounds {
        for k in 0..targets.len() {
            let t = (k + round) % targets.len();
            let s = saturate(targets[t].0, &targets[t].1, &script, seconds, &proxies[t]);
            eprintln!(
                "round {round:2} {:16} {:8.0} req/s p50 {:.2} ms p99 {:.2} ms",
                targets[t].0, s.rps, s.p50, s.p99
            );
            sat[t].push(s);
        }
    }
    let ratios = |a: usize, b: usize| -> Vec<f64> {
        sat[a]
            .iter()
            .zip(&sat[b])
            .map(|(x, y)| x.rps / y.rps)
            .collect()
    };
    println!("\n## Saturation (wrk 2x{CONNECTIONS}, {rounds} rounds of {seconds} s, medians)\n");
    println!("| target | requests/s | p50 | p99 | proxy CPU / request (user + system) | machine CPU / request |\n|---|---:|---:|---:|---:|---:|");
    for (t, (name, _)) in targets.iter().enumerate() {
        let cpu = if sat[t][0].cpu.is_some() {
            let user = median(&mut sat[t].iter().map(|s| s.cpu.unwrap().0).collect::<Vec<_>>());
            let system = median(&mut sat[t].iter().map(|s| s.cpu.unwrap().1).collect::<Vec<_>>());
            format!("{user:.1} + {system:.1} µs")
        } else {
            "—".to_owned()
        };
        println!(
            "| {name} | {:.0} | {:.2} ms | {:.2} ms | {cpu} | {:.1} µs |",
            median(&mut sat[t].iter().map(|s| s.rps).collect::<Vec<_>>()),
            median(&mut sat[t].iter().map(|s| s.p50).collect::<Vec<_>>()),
            median(&mut sat[t].iter().map(|s| s.p99).collect::<Vec<_>>()),
            median(&mut sat[t].iter().map(|s| s.machine).collect::<Vec<_>>()),
        );
    }
    let mut gw_nginx = ratios(2, 1);
    println!(
        "\ngateway / nginx throughput, paired by round: median {:.3}x (rounds: {})",
        median(&mut gw_nginx.clone()),
        gw_nginx
            .iter_mut()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    // Where the difference comes from: with the machine saturated, throughput is its busy
    // cores over the CPU one request takes on the whole machine; the proxy's own share is the
    // only part that differs between the targets.
    let med = |t: usize, f: &dyn Fn(&Saturation) -> f64| {
        median(&mut sat[t].iter().map(f).collect::<Vec<_>>())
    };
    let own = |s: &Saturation| s.cpu.map_or(0.0, |(u, y)| u + y);
    println!(
        "machine CPU per request (medians): nginx target {:.1} µs, of it nginx {:.1} µs; \
         gateway target {:.1} µs, of it the gateway {:.1} µs; the rest (wrk, the upstream, \
         their kernel work) {:.1} and {:.1} µs",
        med(1, &|s| s.machine),
        med(1, &own),
        med(2, &|s| s.machine),
        med(2, &own),
        med(1, &|s| s.machine - own(s)),
        med(2, &|s| s.machine - own(s)),
    );

    let nginx_rps = median(&mut sat[1].iter().map(|s| s.rps).collect::<Vec<_>>());
    for (rate, why) in [
        ((nginx_rps / 2.0).round(), "half of nginx's saturation"),
        (FIXED_RATE, "a fixed 10,000 requests/s"),
    ] {
        fixed_rate(&targets, rate, why, seconds, rounds);
    }
    drop(gw);
    drop(nginx);

    if setting("PROXY_SCALE", 1) == 0 {
        return;
    }
    scale(&rt, &shipped, &schema, &db, &dir, &agent_url, seconds);
    drop(upstream);
}

/// p50, p99, p99.9 (ms) and late starts of one open-loop run.
type Percentiles = (f64, f64, f64, usize);

/// Latency of each target at `rate` requests per second, open loop (`open_loop`): `rounds`
/// runs of `seconds` per target in rotating order, like the saturation rounds, so a burst of
/// the machine's other work lands in one round of one target rather than deciding a target's
/// figure; medians over the rounds, and the gateway's p99 over nginx's paired by round.
fn fixed_rate(targets: &[(&str, String)], rate: f64, why: &str, seconds: usize, rounds: usize) {
    println!(
        "\n## Latency at {rate:.0} req/s ({why}), open loop, {CONNECTIONS} connections, \
         {rounds} rounds of {seconds} s, medians\n"
    );
    println!(
        "| target | p50 | p99 | p99.9 | late starts | errors |\n|---|---:|---:|---:|---:|---:|"
    );
    for (_, url) in targets {
        let _ = open_loop(url, rate, 1.0); // warm-up
    }
    // [target][round]
    let mut runs: Vec<Vec<Percentiles>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for k in 0..targets.len() {
            let t = (k + round) % targets.len();
            let (name, url) = &targets[t];
            let run = open_loop(url, rate, seconds as f64);
            // A failed request has no latency to count: the run is void rather than flattering.
            assert_eq!(
                run.errors, 0,
                "{name}: requests failed in the open-loop run"
            );
            eprintln!(
                "round {round:2} {name:16} at {rate:.0}/s: p50 {:.3} ms p99 {:.3} ms p99.9 {:.3} ms",
                run.at(0.5),
                run.at(0.99),
                run.at(0.999)
            );
            runs[t].push((run.at(0.5), run.at(0.99), run.at(0.999), run.late_starts));
        }
    }
    let med = |t: usize, f: &dyn Fn(&Percentiles) -> f64| {
        median(&mut runs[t].iter().map(f).collect::<Vec<_>>())
    };
    for (t, (name, _)) in targets.iter().enumerate() {
        println!(
            "| {name} | {:.3} ms | {:.3} ms | {:.3} ms | {:.0} | 0 |",
            med(t, &|r| r.0),
            med(t, &|r| r.1),
            med(t, &|r| r.2),
            med(t, &|r| r.3 as f64),
        );
    }
    let mut paired: Vec<f64> = runs[2]
        .iter()
        .zip(&runs[1])
        .map(|(g, n)| g.1 / n.1)
        .collect();
    println!(
        "\ngateway p99 / nginx p99 at {rate:.0} req/s, paired by round: median {:.2}x (rounds: {}); \
         added over the upstream direct (medians): p50 +{:.3} ms, p99 +{:.3} ms, p99.9 +{:.3} ms \
         (nginx: +{:.3}, +{:.3}, +{:.3})",
        median(&mut paired.clone()),
        paired
            .iter_mut()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" "),
        med(2, &|r| r.0) - med(0, &|r| r.0),
        med(2, &|r| r.1) - med(0, &|r| r.1),
        med(2, &|r| r.2) - med(0, &|r| r.2),
        med(1, &|r| r.0) - med(0, &|r| r.0),
        med(1, &|r| r.1) - med(0, &|r| r.1),
        med(1, &|r| r.2) - med(0, &|r| r.2),
    );
}

fn scale(
    rt: &tokio::runtime::Runtime,
    shipped: &Path,
    schema: &str,
    db: &str,
    dir: &Path,
    agent_url: &str,
    seconds: usize,
) {
    const REGISTERED: i64 = 1_000_000;
    eprintln!("registering {REGISTERED} workspaces …");
    // Straight into the table, change-notification triggers off for this session (a million
    // notifications nobody listens to), no statement timeout.
    rt.block_on(pg::admin_execute(&format!(
        r#"SET search_path TO {schema}; SET statement_timeout = 0;
           SET session_replication_role = replica;
           INSERT INTO workspaces (id, agent_url, budget_limits)
           SELECT 'ws-' || i, '{agent_url}',
                  CASE WHEN i % 2 = 0 THEN '{{"hourly": 1000000000, "monthly": 2000000000}}'::JSONB
                       ELSE '{{}}'::JSONB END
           FROM generate_series(0, {REGISTERED} - 1) i
           ON CONFLICT (id) DO NOTHING;
           RESET session_replication_role;"#
    )));
    rt.block_on(pg::admin_execute(&format!(
        "VACUUM ANALYZE {schema}.workspaces"
    )));
    // `PROXY_GATEWAY_ARGS`: extra flags for this gateway (for experiments, e.g. another TTL).
    let extra = std::env::var("PROXY_GATEWAY_ARGS").unwrap_or_default();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--admin-token",
        gateway::ADMIN,
        "--database-url",
        db,
    ];
    args.extend(extra.split_whitespace());
    let started = Instant::now();
    let gw = gateway::Gateway::start_binary(shipped, &args, &[]);
    let startup = started.elapsed();
    let pid = gw.child.id();
    println!("\n## 1,000,000 registered workspaces\n");
    println!(
        "start-up to listening: {:.2} s; RSS at start {} KiB\n",
        startup.as_secs_f64(),
        rss_kib(pid)
    );
    println!(
        "| active workspaces | requests/s | p50 | p99 | RSS after | gateway CPU / request | postgres CPU / request | let through unchecked |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let url = format!("http://{}/", gw.addr);
    let mut rss = Vec::new();
    let mut first_rps = None;
    let ticks_per_second = cpu::ticks_per_second();
    for n in [10usize, 1_000, 100_000] {
        let script = spread_script(dir, n);
        // Warm-up: every active workspace seen, and with many of them past the 30 s decision
        // TTL, so the measured stretch pays the steady state's refreshes, not a cold start.
        wrk(&url, &script, if n > 10_000 { "35s" } else { "2s" });
        let unchecked0 = rt.block_on(failed_open(&gw));
        let (gateway0, postgres0) = (cpu::cpu_ticks(pid), cpu::cpu_ticks_named("postgres"));
        let report = wrk(&url, &script, &format!("{seconds}s"));
        let (gateway1, postgres1) = (cpu::cpu_ticks(pid), cpu::cpu_ticks_named("postgres"));
        // Calls the layer let through without a decision (the store slow or the breaker open)
        // during the measured stretch: a figure bought with them would not be a checked one.
        let unchecked = rt.block_on(failed_open(&gw)) - unchecked0;
        assert!(!report.contains("Non-2xx"), "{n} active: errors:\n{report}");
        let rps = requests_per_second(&report);
        let done = wrk::requests(&report);
        let per_request = |ticks: f64| ticks / ticks_per_second * 1e6 / done;
        let kib = rss_kib(pid);
        rss.push((n, kib));
        let base = *first_rps.get_or_insert(rps);
        println!(
            "| {n} | {rps:.0} ({:.2}x) | {:.2} ms | {:.2} ms | {kib} KiB | {:.1} µs | {:.1} µs | {unchecked} |",
            rps / base,
            percentile(&report, "50%"),
            percentile(&report, "99%"),
            per_request(gateway1 - gateway0),
            per_request(postgres1 - postgres0),
        );
    }
    let (n0, k0) = rss[0];
    let (n1, k1) = rss[rss.len() - 1];
    println!(
        "\nRSS growth per active workspace ({n0} → {n1}): {:.0} bytes",
        (k1 as f64 - k0 as f64) * 1024.0 / (n1 - n0) as f64
    );
    drop(gw);
    rt.block_on(pg::admin_execute(&format!("DROP SCHEMA {schema} CASCADE")));
}
