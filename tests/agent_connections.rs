//! The gateway's connections to agents (`examples/gateway/agents.rs`): kept alive and reused,
//! and not reused when the agent says it closes them. Behind the gateway sits a raw HTTP/1.1
//! agent that counts the connections it accepts.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::gateway::Gateway;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An agent that answers every request with a small JSON-RPC result; under `/close` it says
/// `Connection: close` and closes the connection after the response; under `/empty` it answers
/// `204 No Content`.
struct CountingAgent {
    url: String,
    accepted: Arc<AtomicUsize>,
}

async fn counting_agent() -> CountingAgent {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: the head, then a Content-Length body.
                    let head_end = loop {
                        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    while buf.len() < head_end + length {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + length);
                    let path = head.split(' ').nth(1).unwrap_or("");
                    let close = path.starts_with("/close");
                    let body = r#"{"jsonrpc":"2.0","id":"1","result":{}}"#;
                    let response = if path.starts_with("/empty") {
                        "HTTP/1.1 204 No Content\r\n\r\n".to_owned()
                    } else {
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n{body}",
                            body.len(),
                            if close { "connection: close\r\n" } else { "" }
                        )
                    };
                    if stream.write_all(response.as_bytes()).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    CountingAgent {
        url: format!("http://{addr}"),
        accepted,
    }
}

/// `gateway_agent_connections_opened_total` from `/metrics`.
async fn opened(gw: &Gateway) -> u64 {
    gw.metric("gateway_agent_connections_opened_total").await as u64
}

/// Sequential calls reuse one connection to the agent (the client's keep-alive connection is
/// served by one thread, whose pool holds the agent connection): a proxy that connected per
/// request would cost the agent a handshake and a port per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_calls_share_one_agent_connection() {
    let agent = counting_agent().await;
    let gw = Gateway::start(&[]);
    gw.register("ws-keep", &format!("{}/keep", agent.url)).await;
    for i in 0..30 {
        let r = gw.rpc("ws-keep").await;
        assert_eq!(r.status, StatusCode::OK, "call {i}: {:?}", r.json);
    }
    let accepted = agent.accepted.load(Ordering::SeqCst);
    assert!(
        (1..=serving_threads()).contains(&accepted),
        "30 calls opened {accepted} agent connections"
    );
    assert_eq!(opened(&gw).await, accepted as u64, "the metric counts them");
}

/// Responses without a body (204 here; HEAD, 304 and `Content-Length: 0` alike) are complete
/// before anyone reads them, and the server drops them unread: their connection is reused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_without_a_body_reuse_their_connection() {
    let agent = counting_agent().await;
    let gw = Gateway::start(&[]);
    gw.register("ws-empty", &format!("{}/empty", agent.url))
        .await;
    for i in 0..10 {
        let r = gw.rpc("ws-empty").await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "call {i}");
    }
    let accepted = agent.accepted.load(Ordering::SeqCst);
    assert!(
        (1..=serving_threads()).contains(&accepted),
        "10 calls opened {accepted} agent connections"
    );
}

/// The gateway serves on one thread per core, each with its own agent connections.
fn serving_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// An agent that answers `Connection: close` gets a new connection for each call, and no call
/// fails for it (none is sent on a connection the agent closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_closes_its_connections_gets_new_ones() {
    let agent = counting_agent().await;
    let gw = Gateway::start(&[]);
    gw.register("ws-close", &format!("{}/close", agent.url))
        .await;
    for i in 0..10 {
        let r = gw.rpc("ws-close").await;
        assert_eq!(r.status, StatusCode::OK, "call {i}: {:?}", r.json);
    }
    assert_eq!(agent.accepted.load(Ordering::SeqCst), 10);
}
