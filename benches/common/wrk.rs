//! wrk (Debian's package) for the load benches: 2 threads, 32 connections, latency percentiles.

use std::path::Path;
use std::process::Command;

/// Connections wrk keeps open.
pub const CONNECTIONS: usize = 32;

/// A number from the environment variable `name`, else `default`.
pub fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// wrk's report of `script` against `url` for `duration` ("5s").
pub fn wrk(url: &str, script: &Path, duration: &str) -> String {
    let out = Command::new("wrk")
        .args(["-t", "2", "-c", &CONNECTIONS.to_string(), "-d", duration])
        .args(["--latency", "-s"])
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
pub fn percentile(report: &str, label: &str) -> f64 {
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

/// Requests per second of a report.
pub fn requests_per_second(report: &str) -> f64 {
    report
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .expect("Requests/sec")
        .trim()
        .parse()
        .unwrap()
}

/// The requests a wrk run completed ("N requests in Xs").
pub fn requests(report: &str) -> f64 {
    report
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .expect("requests in")
        .0
        .parse()
        .unwrap()
}
