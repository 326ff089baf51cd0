//! Runs the example gateway as a real process on a loopback port, and talks to it over HTTP.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub const ADMIN: &str = "test-admin-token";

/// The gateway binary, built once per test process (a no-op when it is up to date).
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| example("gateway")).clone()
}

/// Waits (≤ 30 s) until every gateway's change listener is connected.
pub async fn until_listening(gateways: &[&Gateway]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for gw in gateways {
        while !gw.listener_connected().await {
            assert!(
                Instant::now() < deadline,
                "gateway {} not listening within 30 s",
                gw.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Builds the example gateway in release mode into `target_dir` (for benches) and returns its path.
pub fn release_build(target_dir: &std::path::Path) -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "--example", "gateway"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target_dir)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "build the gateway");
    target_dir.join("release/examples/gateway")
}

/// Builds the example `name` with all features — the build CI and packagers make must enforce
/// like any other — and returns its path (a no-op build when it is up to date).
pub fn example(name: &str) -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--all-features", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building the example {name} failed");
    // target/debug/deps/<test> → target/debug/examples/<name>
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name)
}

pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub client: Client<HttpConnector, Full<Bytes>>,
    /// The admin token the gateway printed when it generated one.
    pub printed_token: Option<String>,
}

impl Gateway {
    /// Starts the gateway on 127.0.0.1:0 with `ADMIN` as admin token and `args` added. Unless
    /// `args` set one, the check timeout is 2 s: tests that expect a 402 must not depend on a
    /// 50 ms check on a busy debug build.
    pub fn start(args: &[&str]) -> Gateway {
        let mut all = vec!["--listen", "127.0.0.1:0", "--admin-token", ADMIN];
        if !args.contains(&"--check-timeout-ms") {
            all.extend_from_slice(&["--check-timeout-ms", "2000"]);
        }
        all.extend_from_slice(args);
        Gateway::start_raw(&all, &[])
    }

    /// Starts the gateway with exactly `args` and extra environment `env`; waits (≤ 60 s) for
    /// its "listening on" line.
    pub fn start_raw(args: &[&str], env: &[(&str, &str)]) -> Gateway {
        Gateway::start_binary(&binary(), args, env)
    }

    /// Like [`start`](Self::start), logging at debug level into `log` instead of the terminal.
    pub fn start_logged(args: &[&str], log: &std::path::Path) -> Gateway {
        let mut all = vec!["--listen", "127.0.0.1:0", "--admin-token", ADMIN];
        all.extend_from_slice(args);
        let file = std::fs::File::create(log).unwrap();
        Gateway::spawn(&binary(), &all, &[("RUST_LOG", "debug")], Stdio::from(file))
    }

    /// Like [`start_raw`](Self::start_raw) with another build of the gateway.
    pub fn start_binary(binary: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Gateway {
        Gateway::spawn(binary, args, env, Stdio::inherit())
    }

    fn spawn(
        binary: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Gateway {
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the gateway");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut printed_token = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the gateway did not say it was listening within 60 s");
            });
            if let Some(t) = line.strip_prefix("admin token: ") {
                printed_token = Some(t.to_owned());
            }
            if let Some(rest) = line.strip_prefix("listening on http://") {
                let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                let client = Client::builder(TokioExecutor::new()).build_http();
                return Gateway {
                    child,
                    addr,
                    client,
                    printed_token,
                };
            }
        }
    }

    /// Registers `id` at `url` as the admin; the workspace's token (asserts a 200).
    pub async fn register(&self, id: &str, url: &str) -> String {
        let body = serde_json::json!({"workspace_id": id, "url": url});
        let r = self
            .call(Method::POST, "/registry/register", Some(ADMIN), Some(&body))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
        assert_eq!(r.json["workspace_id"], id);
        r.json["token"].as_str().unwrap().to_owned()
    }

    /// A JSON-RPC `SendMessage` to `id`'s agent through the gateway.
    pub async fn rpc(&self, id: &str) -> Reply {
        let body = serde_json::json!({"jsonrpc": "2.0", "id": "1", "method": "SendMessage", "params": {"message": {"messageId": "u1", "role": "ROLE_USER", "parts": [{"text": "ping"}]}}});
        self.call(
            Method::POST,
            &format!("/workspaces/{id}/a2a"),
            None,
            Some(&body),
        )
        .await
    }

    /// Patches `id`'s limits as the admin (asserts a 200).
    pub async fn patch_limits(&self, id: &str, limits: Value) {
        let r = self
            .call(
                Method::PATCH,
                &format!("/workspaces/{id}/budget"),
                Some(ADMIN),
                Some(&serde_json::json!({ "budget_limits": limits })),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    }

    /// `GET /workspaces/{id}/budget` with `token`.
    pub async fn budget(&self, id: &str, token: &str) -> Reply {
        self.call(
            Method::GET,
            &format!("/workspaces/{id}/budget"),
            Some(token),
            None,
        )
        .await
    }

    /// `DELETE /workspaces/{id}` as the admin.
    pub async fn delete_workspace(&self, id: &str) -> Reply {
        self.call(
            Method::DELETE,
            &format!("/workspaces/{id}"),
            Some(ADMIN),
            None,
        )
        .await
    }

    /// Whether `/healthz` says the change listener is connected.
    pub async fn listener_connected(&self) -> bool {
        let r = self.call(Method::GET, "/healthz", None, None).await;
        assert_eq!(r.json["store"], "postgres", "{:?}", r.json);
        r.json["listener"] == "connected"
    }

    /// A metric's value in `/metrics` (0 when absent); `name` may carry labels
    /// (`name{label="value"}`, as the exporter writes them).
    pub async fn metric(&self, name: &str) -> f64 {
        let r = self.call(Method::GET, "/metrics", None, None).await;
        String::from_utf8_lossy(&r.bytes)
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// One request; the body is JSON when `body` is given.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Reply {
        let raw = body.map(|b| b.to_string());
        self.call_raw(method, path, token, raw.as_deref(), &[])
            .await
    }

    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(self.url(path));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
            .unwrap();
        let res = tokio::time::timeout(Duration::from_secs(20), self.client.request(req))
            .await
            .expect("gateway answers within 20 s")
            .expect("gateway reachable");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            json,
            bytes,
        }
    }

    /// Sends SIGTERM and waits (≤ 40 s) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("-TERM")
    }

    /// Sends `signal` (`-TERM`, `-INT`) and waits (≤ 40 s) for the exit status.
    pub fn signal(&mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args([signal, &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
    pub bytes: Bytes,
}
