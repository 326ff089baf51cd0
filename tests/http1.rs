//! The gateway's HTTP/1.1 server on the wire: the plain requests it answers itself (pipelined,
//! split over writes, streamed back, closed on request, cancelled when the client leaves), and
//! the ones it hands to hyper's server with the connection (chunked bodies, `Expect`, `HEAD`,
//! HTTP/1.0, malformed heads) — after which the connection keeps working.
//! Raw sockets, so that what is tested is the bytes a client sees.

mod common;

use std::time::Duration;

use common::agent::{Agent, EVENTS};
use common::gateway::Gateway;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Lower-cased names, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Whether the body was chunked.
    chunked: bool,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A client connection that reads answers with a deadline.
struct Client {
    stream: TcpStream,
    read: Vec<u8>,
}

const DEADLINE: Duration = Duration::from_secs(20);

impl Client {
    async fn connect(gw: &Gateway) -> Client {
        let stream = TcpStream::connect(gw.addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            read: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads more; false at end of stream.
    async fn fill(&mut self) -> bool {
        let mut buf = [0u8; 16 * 1024];
        let n = tokio::time::timeout(DEADLINE, self.stream.read(&mut buf))
            .await
            .expect("the gateway answers within 20 s")
            .unwrap_or(0);
        self.read.extend_from_slice(&buf[..n]);
        n > 0
    }

    /// The next answer (`head` if it was the answer to a `HEAD` request: no body).
    async fn answer_to(&mut self, head: bool) -> Answer {
        let (status, headers, at) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut fields);
            match response.parse(&self.read).unwrap() {
                httparse::Status::Complete(at) => {
                    let headers = response
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect::<Vec<_>>();
                    break (response.code.unwrap(), headers, at);
                }
                httparse::Status::Partial => {
                    assert!(self.fill().await, "connection closed before an answer");
                }
            }
        };
        self.read.drain(..at);
        let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let chunked = find("transfer-encoding").is_some_and(|v| v == "chunked");
        let mut body = Vec::new();
        if head || status / 100 == 1 || status == 204 || status == 304 {
        } else if chunked {
            loop {
                let line_end = loop {
                    if let Some(i) = self.read.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    assert!(self.fill().await, "connection closed in a chunk size");
                };
                let size =
                    usize::from_str_radix(std::str::from_utf8(&self.read[..line_end]).unwrap(), 16)
                        .unwrap();
                while self.read.len() < line_end + 2 + size + 2 {
                    assert!(self.fill().await, "connection closed in a chunk");
                }
                body.extend_from_slice(&self.read[line_end + 2..line_end + 2 + size]);
                assert_eq!(
                    &self.read[line_end + 2 + size..line_end + 4 + size],
                    b"\r\n"
                );
                self.read.drain(..line_end + 4 + size);
                if size == 0 {
                    break;
                }
            }
        } else {
            let length: usize = find("content-length")
                .expect("a length or chunks")
                .parse()
                .unwrap();
            while self.read.len() < length {
                assert!(self.fill().await, "connection closed in a body");
            }
            body = self.read.drain(..length).collect();
        }
        Answer {
            status,
            headers,
            body,
            chunked,
        }
    }

    async fn answer(&mut self) -> Answer {
        self.answer_to(false).await
    }

    /// Whether the gateway closed the connection (nothing more is read before end of stream).
    async fn closed(&mut self) -> bool {
        while self.read.is_empty() {
            if !self.fill().await {
                return true;
            }
        }
        false
    }
}

fn rpc_body(method: &str) -> String {
    json!({"jsonrpc": "2.0", "id": "1", "method": method, "params": {}}).to_string()
}

fn rpc(path: &str, method: &str) -> Vec<u8> {
    let body = rpc_body(method);
    format!(
        "POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const HEALTH: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n";

/// Connections handed to hyper's server for `reason` (all reasons: `None`).
async fn handovers(gw: &Gateway, reason: Option<&str>) -> f64 {
    const REASONS: [&str; 6] = [
        "method",
        "version",
        "target",
        "framing",
        "expect_upgrade_te",
        "malformed",
    ];
    let mut total = 0.0;
    for r in &REASONS {
        if reason.is_none_or(|reason| reason == *r) {
            total += gw
                .metric(&format!("gateway_http1_handovers_total{{reason=\"{r}\"}}"))
                .await;
        }
    }
    total
}

/// Waits (≤ 20 s) until the gateway has read all that `client` sent: the client's send queue
/// and the gateway's receive queue of the connection are empty (`/proc/net/tcp`).
async fn until_read(client: &Client) {
    let hex = |a: std::net::SocketAddr| match a {
        std::net::SocketAddr::V4(a) => {
            format!(
                "{:08X}:{:04X}",
                u32::from_ne_bytes(a.ip().octets()),
                a.port()
            )
        }
        std::net::SocketAddr::V6(_) => panic!("IPv4 only"),
    };
    let (ours, theirs) = (
        hex(client.stream.local_addr().unwrap()),
        hex(client.stream.peer_addr().unwrap()),
    );
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let queues = |local: &str, remote: &str| {
            table.lines().find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // An established connection's row (a closed one may linger with the same
                // addresses and empty queues).
                (f.len() > 4 && f[1] == local && f[2] == remote && f[3] == "01")
                    .then(|| f[4].to_owned())
            })
        };
        let sent = queues(&ours, &theirs).is_some_and(|q| q.starts_with("00000000:"));
        let read = queues(&theirs, &ours).is_some_and(|q| q.ends_with(":00000000"));
        if sent && read {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway did not read what was sent"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An agent on a loopback port that runs `serve` on each connection it accepts.
async fn raw_agent<F, Fut>(serve: F) -> std::net::SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve(conn));
        }
    });
    addr
}

async fn gateway_with_agent() -> (Gateway, Agent) {
    let gw = Gateway::start(&[]);
    let agent = Agent::start().await;
    gw.register("ws-1", &agent.url()).await;
    (gw, agent)
}

/// A plain answer the gateway wrote: a date, a length, and its request id.
fn assert_plain(answer: &Answer) {
    assert!(answer.header("date").is_some(), "{answer:?}");
    assert!(answer.header("x-request-id").is_some(), "{answer:?}");
    assert_eq!(
        answer.header("content-length").map(str::parse::<usize>),
        Some(Ok(answer.body.len())),
        "{answer:?}"
    );
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (gw, _agent) = gateway_with_agent().await;
    let mut client = Client::connect(&gw).await;
    let mut three = rpc("/workspaces/ws-1/a2a", "SendMessage");
    three.extend_from_slice(HEALTH);
    three.extend_from_slice(&rpc("/workspaces/ws-1/a2a/echo?x=1", "Echo"));
    client.send(&three).await;
    let first = client.answer().await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(
        first.json()["result"]["message"]["parts"][0]["text"],
        "pong"
    );
    assert_plain(&first);
    let second = client.answer().await;
    assert_eq!(second.json()["status"], "ok", "{second:?}");
    assert_plain(&second);
    let third = client.answer().await;
    assert_eq!(third.json()["path"], "/agent/echo", "{third:?}");
    assert_eq!(third.json()["query"], "x=1");
    assert_eq!(third.json()["body_len"], rpc_body("Echo").len());
    assert_plain(&third);
    // Three request ids, all different.
    let ids: std::collections::HashSet<_> = [&first, &second, &third]
        .iter()
        .map(|a| a.header("x-request-id").unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3);
    // And the connection is still open for a fourth, all answered without hyper's server.
    client.send(HEALTH).await;
    assert_eq!(client.answer().await.status, 200);
    assert_eq!(handovers(&gw, None).await, 0.0);
}

#[tokio::test]
async fn requests_split_over_writes_and_large_bodies_arrive_whole() {
    let (gw, _agent) = gateway_with_agent().await;
    let mut client = Client::connect(&gw).await;
    // A head in three writes, its body after it.
    let body = vec![b'x'; 40_000];
    let head = format!(
        "POST /workspaces/ws-1/a2a/echo HTTP/1.1\r\nhost: gw\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    // A head in three writes, each read before the next is sent, then its body: taken here.
    let (a, rest) = head.as_bytes().split_at(10);
    let (b, c) = rest.split_at(20);
    for part in [a, b] {
        client.send(part).await;
        until_read(&client).await;
    }
    let mut last = c.to_vec();
    last.extend_from_slice(&body);
    client.send(&last).await;
    let answer = client.answer().await;
    assert_eq!(answer.json()["body_len"], 40_000, "{answer:?}");
    assert_eq!(handovers(&gw, None).await, 0.0);
    // A head whose body comes later, each part read before the next is sent: the body
    // streams to the service (the agent) as it arrives.
    client.send(head.as_bytes()).await;
    until_read(&client).await;
    client.send(&body[..1]).await;
    until_read(&client).await;
    client.send(&body[1..]).await;
    let answer = client.answer().await;
    assert_eq!(answer.json()["body_len"], 40_000, "{answer:?}");
    // Bodies larger than the read-ahead (64 KiB) too; later requests on the connection are
    // answered.
    for len in [70_000usize, 1_000_000] {
        let mut request = format!(
            "POST /workspaces/ws-1/a2a/echo HTTP/1.1\r\nhost: gw\r\ncontent-length: {len}\r\n\r\n"
        )
        .into_bytes();
        request.resize(request.len() + len, b'y');
        client.send(&request).await;
        let answer = client.answer().await;
        assert_eq!(answer.json()["body_len"], len, "{answer:?}");
        client.send(HEALTH).await;
        assert_eq!(client.answer().await.json()["status"], "ok");
    }
    assert_eq!(handovers(&gw, None).await, 0.0);
}

#[tokio::test]
async fn requests_for_hyper_keep_their_connection_working() {
    let (gw, _agent) = gateway_with_agent().await;
    // Each case on a connection of its own, followed by a plain request on it.
    let cases: [(&str, &[u8], u16, bool, &str); 6] = [
        (
            "chunked body",
            b"POST /workspaces/ws-1/a2a/echo HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            200,
            false,
            "framing",
        ),
        (
            "HEAD",
            b"HEAD /healthz HTTP/1.1\r\nhost: gw\r\n\r\n",
            200,
            true,
            "method",
        ),
        (
            "HTTP/1.0 with keep-alive",
            b"GET /healthz HTTP/1.0\r\nconnection: keep-alive\r\n\r\n",
            200,
            false,
            "version",
        ),
        (
            "PATCH",
            b"PATCH /workspaces/ws-1/budget HTTP/1.1\r\nhost: gw\r\ncontent-length: 2\r\n\r\n{}",
            401,
            false,
            "method",
        ),
        (
            "absolute-form target",
            b"GET http://gw/healthz HTTP/1.1\r\nhost: gw\r\n\r\n",
            200,
            false,
            "target",
        ),
        (
            "TE: trailers",
            b"GET /healthz HTTP/1.1\r\nhost: gw\r\nte: trailers\r\n\r\n",
            200,
            false,
            "expect_upgrade_te",
        ),
    ];
    for (case, request, status, head, reason) in cases {
        let before = handovers(&gw, Some(reason)).await;
        let mut client = Client::connect(&gw).await;
        client.send(request).await;
        let answer = client.answer_to(head).await;
        assert_eq!(answer.status, status, "{case}: {answer:?}");
        if case == "chunked body" {
            assert_eq!(answer.json()["body_len"], 11, "{case}: {answer:?}");
        }
        client.send(HEALTH).await;
        let next = client.answer().await;
        assert_eq!(next.json()["status"], "ok", "{case}: then {next:?}");
        assert_eq!(handovers(&gw, Some(reason)).await, before + 1.0, "{case}");
    }

    // `Expect: 100-continue`: hyper's `100 Continue` first, then the answer.
    let before = handovers(&gw, Some("expect_upgrade_te")).await;
    let mut client = Client::connect(&gw).await;
    client
        .send(b"POST /workspaces/ws-1/a2a/echo HTTP/1.1\r\nhost: gw\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n")
        .await;
    let go_on = client.answer().await;
    assert_eq!(go_on.status, 100, "{go_on:?}");
    client.send(b"abcd").await;
    let answer = client.answer().await;
    assert_eq!(answer.json()["body_len"], 4, "{answer:?}");
    assert_eq!(
        handovers(&gw, Some("expect_upgrade_te")).await,
        before + 1.0
    );
}

#[tokio::test]
async fn malformed_and_smuggling_heads_are_refused() {
    let (gw, _agent) = gateway_with_agent().await;
    let cases: [&[u8]; 7] = [
        // Targets `http` refuses (the plain path's own 400) and one httparse refuses (hyper's).
        b"GET /a<b HTTP/1.1\r\nhost: gw\r\n\r\n",
        b"GET /a?b\"c HTTP/1.1\r\nhost: gw\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nhost: gw\r\nbad\x01name: 1\r\n\r\n",
        b"POST /workspaces/ws-1/a2a/echo HTTP/1.1\r\nhost: gw\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcde",
        b"POST /workspaces/ws-1/a2a/echo HTTP/1.1\r\nhost: gw\r\ncontent-length: +4\r\n\r\nabcd",
        b"GET /healthz HTTP/1.1\r\nhost: gw\r\nx: a\r\n b\r\n\r\n",
        b"GET /he\x7flthz HTTP/1.1\r\nhost: gw\r\n\r\n",
    ];
    for case in cases {
        let mut client = Client::connect(&gw).await;
        client.send(case).await;
        let answer = client.answer().await;
        assert_eq!(
            answer.status,
            400,
            "{:?}: {answer:?}",
            String::from_utf8_lossy(case)
        );
        assert!(client.closed().await, "{:?}", String::from_utf8_lossy(case));
    }
    // Both framings: hyper reads the chunked body (RFC 9112 §6.1) and closes the connection
    // after its answer, so what follows the chunks is never taken as a request.
    let mut client = Client::connect(&gw).await;
    client
        .send(b"POST /workspaces/ws-1/a2a/echo HTTP/1.1\r\nhost: gw\r\ncontent-length: 40\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await;
    let answer = client.answer().await;
    assert_eq!(answer.json()["body_len"], 0, "{answer:?}");
    assert!(
        client.closed().await,
        "a request after the chunks was answered"
    );
    // More fields than hyper takes: 431, from hyper.
    let mut client = Client::connect(&gw).await;
    let mut big = b"GET /healthz HTTP/1.1\r\nhost: gw\r\n".to_vec();
    for i in 0..120 {
        big.extend_from_slice(format!("x-field-{i}: {i}\r\n").as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    client.send(&big).await;
    assert_eq!(client.answer().await.status, 431);
    // A head that does not end within 32 KiB: 431, and the connection closes. (Exactly
    // 32 KiB: bytes sent past the limit would be left unread, and the kernel would answer
    // them with a reset that can overtake the 431.)
    let mut client = Client::connect(&gw).await;
    let mut endless = b"GET /healthz HTTP/1.1\r\nhost: gw\r\nx: ".to_vec();
    endless.resize(32 * 1024, b'a');
    client.send(&endless).await;
    let answer = client.answer().await;
    assert_eq!(answer.status, 431, "{answer:?}");
    assert!(client.closed().await);
}

#[tokio::test]
async fn connection_close_is_answered_and_honoured() {
    let (gw, _agent) = gateway_with_agent().await;
    let mut client = Client::connect(&gw).await;
    client
        .send(b"GET /healthz HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
        .await;
    let answer = client.answer().await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"), "{answer:?}");
    assert!(client.closed().await);
    // Bytes pipelined behind a `Connection: close` request are not answered.
    let mut client = Client::connect(&gw).await;
    let mut two = b"GET /healthz HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n".to_vec();
    two.extend_from_slice(HEALTH);
    client.send(&two).await;
    assert_eq!(client.answer().await.status, 200);
    assert!(client.closed().await);
    assert_eq!(handovers(&gw, None).await, 0.0);
}

#[tokio::test]
async fn streamed_answers_are_chunked_and_the_connection_goes_on() {
    let (gw, _agent) = gateway_with_agent().await;
    let mut client = Client::connect(&gw).await;
    client
        .send(&rpc("/workspaces/ws-1/a2a", "SendStreamingMessage"))
        .await;
    let answer = client.answer().await;
    assert_eq!(answer.status, 200);
    assert!(answer.chunked, "{answer:?}");
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    let text = String::from_utf8(answer.body).unwrap();
    assert_eq!(text.matches("data: ").count(), EVENTS, "{text}");
    client.send(HEALTH).await;
    assert_eq!(client.answer().await.json()["status"], "ok");
    assert_eq!(handovers(&gw, None).await, 0.0);
}

#[tokio::test]
async fn a_client_that_leaves_cancels_its_request_at_the_agent() {
    // An agent that reads a request and never answers; it reports when its connection closes.
    let (got, mut got_rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let addr = raw_agent(move |mut conn| {
        let got = got.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut seen = Vec::new();
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = got.send("closed");
                        return;
                    }
                    Ok(n) => {
                        seen.extend_from_slice(&buf[..n]);
                        if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            let _ = got.send("request");
                            seen.clear();
                        }
                    }
                }
            }
        }
    })
    .await;
    let gw = Gateway::start(&[]);
    gw.register("ws-1", &format!("http://{addr}/agent")).await;
    let mut client = Client::connect(&gw).await;
    client
        .send(&rpc("/workspaces/ws-1/a2a", "SendMessage"))
        .await;
    let first = tokio::time::timeout(DEADLINE, got_rx.recv()).await;
    assert_eq!(first, Ok(Some("request")));
    drop(client);
    let then = tokio::time::timeout(DEADLINE, got_rx.recv()).await;
    assert_eq!(
        then,
        Ok(Some("closed")),
        "the gateway kept the agent's exchange after its client left"
    );
    // The same while the request's body is still coming: the agent has the head and part of
    // the body when the client leaves.
    let mut client = Client::connect(&gw).await;
    client
        .send(b"POST /workspaces/ws-1/a2a HTTP/1.1\r\nhost: gw\r\ncontent-length: 10\r\n\r\n12345")
        .await;
    let first = tokio::time::timeout(DEADLINE, got_rx.recv()).await;
    assert_eq!(first, Ok(Some("request")));
    drop(client);
    let then = tokio::time::timeout(DEADLINE, got_rx.recv()).await;
    assert_eq!(
        then,
        Ok(Some("closed")),
        "the gateway kept the agent's exchange after its client left mid-body"
    );
    assert_eq!(handovers(&gw, None).await, 0.0);
}

#[tokio::test]
async fn shutdown_answers_requests_partly_read_and_closes_idle_connections() {
    let (gw, _agent) = gateway_with_agent().await;
    // A head partly read, a body partly read, and an idle connection on each serving thread
    // (two threads on the 2-core machines this runs on; connections go to them in turn).
    // The partial head is sent last, so that its header read timeout (10 s) is far off.
    let mut head_part = Client::connect(&gw).await;
    let mut body_part = Client::connect(&gw).await;
    body_part
        .send(b"POST /workspaces/ws-1/a2a/echo HTTP/1.1\r\nhost: gw\r\ncontent-length: 10\r\n\r\n12345")
        .await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut client = Client::connect(&gw).await;
        client.send(HEALTH).await;
        assert_eq!(client.answer().await.status, 200);
        idle.push(client);
    }
    head_part
        .send(b"GET /healthz HTTP/1.1\r\nhost: gw\r\n")
        .await;
    until_read(&head_part).await;
    until_read(&body_part).await;
    let pid = gw.child.id().to_string();
    let signalled = std::time::Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // Idle connections close at once (the header read timeout would take 10 s): both threads
    // drain.
    for client in &mut idle {
        assert!(client.closed().await);
    }
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "idle connections closed only after {:?}",
        signalled.elapsed()
    );
    head_part.send(b"\r\n").await;
    let answer = head_part.answer().await;
    assert_eq!(answer.json()["status"], "ok", "{answer:?}");
    assert_eq!(answer.header("connection"), Some("close"), "{answer:?}");
    assert!(head_part.closed().await);
    body_part.send(b"67890").await;
    let answer = body_part.answer().await;
    assert_eq!(answer.json()["body_len"], 10, "{answer:?}");
    assert!(body_part.closed().await);
    let mut gw = gw;
    let deadline = std::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = gw.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn an_answer_the_agent_cuts_short_is_cut_short_and_a_204_has_no_body() {
    // An agent that answers `/agent/empty` with a 204 and `/agent/short` with 10 of the 100
    // bytes it announces, then closes.
    let addr = raw_agent(|mut conn| async move {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
                continue;
            };
            let head = String::from_utf8_lossy(&seen[..end]).into_owned();
            seen.drain(..end + 4);
            if head.starts_with("GET /agent/short ") {
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                    .await;
                return;
            }
            let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        }
    })
    .await;
    let gw = Gateway::start(&[]);
    gw.register("ws-1", &format!("http://{addr}/agent")).await;

    let mut client = Client::connect(&gw).await;
    client
        .send(b"GET /workspaces/ws-1/a2a/empty HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await;
    let answer = client.answer().await;
    assert_eq!(answer.status, 204, "{answer:?}");
    assert_eq!(answer.header("content-length"), None, "{answer:?}");
    assert_eq!(answer.header("transfer-encoding"), None, "{answer:?}");
    client.send(HEALTH).await;
    assert_eq!(client.answer().await.json()["status"], "ok");

    let mut client = Client::connect(&gw).await;
    client
        .send(b"GET /workspaces/ws-1/a2a/short HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await;
    while client.fill().await {}
    let text = String::from_utf8(client.read).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(head.contains("\r\ncontent-length: 100"), "{text}");
    assert_eq!(
        body, "0123456789",
        "the cut answer was not cut where the agent cut it"
    );
    assert_eq!(handovers(&gw, None).await, 0.0);
}

#[tokio::test]
async fn an_answer_before_the_body_is_all_in_closes_the_connection() {
    let (gw, _agent) = gateway_with_agent().await;
    let mut client = Client::connect(&gw).await;
    // An unknown workspace is refused without its body being read.
    client
        .send(b"POST /workspaces/nobody/a2a HTTP/1.1\r\nhost: gw\r\ncontent-length: 100000\r\n\r\n0123456789")
        .await;
    let answer = client.answer().await;
    assert_eq!(answer.status, 404, "{answer:?}");
    assert_eq!(answer.header("connection"), Some("close"), "{answer:?}");
    assert!(client.closed().await);
    // A body all sent, but more than the first read takes: what arrived is read and dropped,
    // and the connection goes on (as with hyper).
    let mut client = Client::connect(&gw).await;
    let mut request =
        b"POST /workspaces/nobody/a2a HTTP/1.1\r\nhost: gw\r\ncontent-length: 20000\r\n\r\n"
            .to_vec();
    request.resize(request.len() + 20_000, b'z');
    client.send(&request).await;
    let answer = client.answer().await;
    assert_eq!(answer.status, 404, "{answer:?}");
    assert_eq!(answer.header("connection"), None, "{answer:?}");
    client.send(HEALTH).await;
    assert_eq!(client.answer().await.json()["status"], "ok");
}
