//! A small A2A test agent on a loopback port: serves an agent card (protocol 1.0), answers
//! JSON-RPC `SendMessage`, streams `SendStreamingMessage` as SSE events spaced in time, echoes
//! what it received on `/echo…`, and answers `/slow` late. Its base URL has a path (`/agent`),
//! so that the gateway's path mapping is exercised.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// Time between two streamed events.
pub const EVENT_SPACING: Duration = Duration::from_millis(300);
/// Events per stream.
pub const EVENTS: usize = 3;

pub struct Agent {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Agent {
    /// The URL to register: `http://127.0.0.1:{port}/agent`.
    pub fn url(&self) -> String {
        format!("http://{}/agent", self.addr)
    }

    pub async fn start() -> Agent {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(req, addr));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stopped.wait_for(|s| *s) => {} // drops the connection: the socket closes
                    }
                });
            }
        });
        Agent {
            addr,
            task,
            shutdown,
        }
    }

    /// Stops listening and closes every open connection: later calls find nobody.
    pub fn stop(&self) {
        self.task.abort();
        let _ = self.shutdown.send(true);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

type AgentBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn json_response(status: StatusCode, body: Value) -> Response<AgentBody> {
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *res.status_mut() = status;
    res.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    res
}

pub fn card(base: &str) -> Value {
    json!({
        "name": "test agent",
        "description": "answers and streams",
        "version": "1.0.0",
        "supportedInterfaces": [
            {"url": format!("{base}/"), "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
            {"url": format!("{base}/rest"), "protocolBinding": "HTTP+JSON", "protocolVersion": "1.0"},
            {"url": "grpc://127.0.0.1:1", "protocolBinding": "GRPC", "protocolVersion": "1.0"}
        ],
        "provider": {"organization": "tests", "url": "https://provider.example"},
        "documentationUrl": format!("{base}/docs"),
        "capabilities": {"streaming": true},
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": [],
        "signatures": [{"protected": "e30", "signature": "c2ln"}]
    })
}

fn message(text: &str) -> Value {
    json!({"messageId": "m-1", "role": "ROLE_AGENT", "parts": [{"text": text}]})
}

async fn handle(
    req: Request<Incoming>,
    addr: SocketAddr,
) -> Result<Response<AgentBody>, Infallible> {
    let base = format!("http://{addr}/agent");
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap_or_default())))
        .collect();
    match path.as_str() {
        "/agent/.well-known/agent-card.json" | "/agent/.well-known/agent.json" => {
            let mut res = json_response(StatusCode::OK, card(&base));
            res.headers_mut()
                .insert("etag", "\"agent-etag\"".parse().unwrap());
            Ok(res)
        }
        p if p.starts_with("/agent/echo") => {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Ok(json_response(
                StatusCode::OK,
                json!({"path": p, "query": query, "headers": headers, "body_len": body.len()}),
            ))
        }
        "/agent/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(json_response(StatusCode::OK, json!({"late": true})))
        }
        "/agent" | "/agent/" => {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let Ok(rpc) = serde_json::from_slice::<Value>(&body) else {
                return Ok(json_response(
                    StatusCode::OK,
                    json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "parse error"}}),
                ));
            };
            let id = rpc["id"].clone();
            match rpc["method"].as_str() {
                Some("SendMessage") => Ok(json_response(
                    StatusCode::OK,
                    json!({"jsonrpc": "2.0", "id": id, "result": {"message": message("pong")}}),
                )),
                Some("SendStreamingMessage") => Ok(stream(id)),
                _ => Ok(json_response(
                    StatusCode::OK,
                    json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "method not found"}}),
                )),
            }
        }
        _ => Ok(json_response(
            StatusCode::NOT_FOUND,
            json!({"error": "no such agent path"}),
        )),
    }
}

/// SSE: `EVENTS` JSON-RPC results, `EVENT_SPACING` apart.
fn stream(id: Value) -> Response<AgentBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tokio::spawn(async move {
        for i in 0..EVENTS {
            if i > 0 {
                tokio::time::sleep(EVENT_SPACING).await;
            }
            let event = json!({"jsonrpc": "2.0", "id": id, "result": {"message": message(&format!("chunk {i}"))}});
            if tx
                .send(Ok(Frame::data(Bytes::from(format!("data: {event}\n\n")))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let mut res = Response::new(StreamBody::new(stream).boxed());
    res.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    res.headers_mut()
        .insert("cache-control", "no-cache".parse().unwrap());
    res
}
