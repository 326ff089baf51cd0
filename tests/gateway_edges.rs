//! The gateway's proxy path at its edges: paths that try to leave the agent's registered path,
//! and agent cards that try to slip past the rewrite (a byte-order mark, a range, compression,
//! garbage). Behind the gateway sits a scripted agent that records every request it gets.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::gateway::Gateway;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// What the scripted agent received: method, path with query, and the `range` header.
type Seen = Arc<Mutex<Vec<(String, String, Option<String>)>>>;

struct Scripted {
    url: String,
    seen: Seen,
}

fn card_json(base: &str) -> Value {
    json!({
        "name": "scripted",
        "url": format!("{base}/"),
        "supportedInterfaces": [{"url": format!("{base}/"), "protocolBinding": "JSONRPC"}]
    })
}

async fn scripted_agent() -> Scripted {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<_>| {
                    let range = req
                        .headers()
                        .get("range")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let path = req.uri().path_and_query().unwrap().to_string();
                    record.lock().unwrap().push((
                        req.method().to_string(),
                        path.clone(),
                        range.clone(),
                    ));
                    let base = format!("http://{addr}/{}", path.split('/').nth(1).unwrap());
                    let card = card_json(&base).to_string();
                    let mut res = Response::builder().header("content-type", "application/json");
                    let body: Bytes = match path.as_str() {
                        p if p.starts_with("/bom/") => {
                            let mut b = b"\xEF\xBB\xBF".to_vec();
                            b.extend_from_slice(card.as_bytes());
                            b.into()
                        }
                        p if p.starts_with("/garbage/") => "{\"url\": \"http://".into(),
                        p if p.starts_with("/gzip/") => {
                            res = res.header("content-encoding", "gzip");
                            card.into()
                        }
                        p if p.starts_with("/redirect/") => {
                            res = res
                                .status(StatusCode::TEMPORARY_REDIRECT)
                                .header("location", format!("{base}/moved"))
                                .header("content-location", "/redirect/here");
                            "{}".into()
                        }
                        p if p.starts_with("/range/") && range.is_some() => {
                            res = res.status(StatusCode::PARTIAL_CONTENT);
                            card[..40].to_owned().into()
                        }
                        p if p.contains("agent-card.json") || p.ends_with("/agent.json") => {
                            card.into()
                        }
                        _ => "{\"ok\": true}".into(),
                    };
                    async move { Ok::<_, Infallible>(res.body(Full::new(body)).unwrap()) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Scripted {
        url: format!("http://{addr}"),
        seen,
    }
}

/// SPEC §8: a path that could leave the agent's registered path is refused with 400 JSON and
/// nothing is forwarded (it used to reach the agent's host as `/a/../b`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_that_could_leave_the_agent_are_refused() {
    let agent = scripted_agent().await;
    let gw = Gateway::start(&[]);
    gw.register("ws-a", &format!("{}/a", agent.url)).await;
    let steering = [
        "/workspaces/ws-a/a2a/../b",
        "/workspaces/ws-a/a2a/..",
        "/workspaces/ws-a/a2a/./x",
        "/workspaces/ws-a/a2a/%2e%2e/b",
        "/workspaces/ws-a/a2a/%2E%2e/b",
        "/workspaces/ws-a/a2a/.%2E/b",
        "/workspaces/ws-a/a2a/%2e/b",
        "/workspaces/ws-a/a2a/x/..%2fb",
        "/workspaces/ws-a/a2a/..%2Fb",
        "/workspaces/ws-a/a2a/x%2F..%2F..%2Fb",
        "/workspaces/ws-a/a2a/..%5cb",
        "/workspaces/ws-a/a2a/x%5C..%5Cb",
        "/workspaces/ws-a/a2a/.well-known/../../b",
        "/workspaces/ws-a/a2a/..;/b",
        "/workspaces/ws-a/a2a/..;x=1/b",
        "/workspaces/ws-a/a2a/%2e%2e%3bx/b",
        "/workspaces/ws-a/a2a/%252e%252e/b",
        "/workspaces/ws-a/a2a/x%252fb",
        "/workspaces/ws-a/a2a/x%00y",
    ];
    for path in steering {
        for method in [Method::POST, Method::GET] {
            let r = gw
                .call_raw(method.clone(), path, None, Some("{}"), &[])
                .await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{method} {path}");
            assert!(r.json["error"].is_string(), "{path}: JSON error");
        }
    }
    assert!(
        agent.seen.lock().unwrap().is_empty(),
        "nothing forwarded: {:?}",
        agent.seen.lock().unwrap()
    );
    // Ordinary paths still go through, dots inside names included.
    for (path, upstream) in [
        ("/workspaces/ws-a/a2a/v1/message", "/a/v1/message"),
        ("/workspaces/ws-a/a2a/file.v2..json", "/a/file.v2..json"),
        ("/workspaces/ws-a/a2a/x%20y?q=..", "/a/x%20y?q=.."),
    ] {
        let r = gw.call_raw(Method::POST, path, None, Some("{}"), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        let last = agent.seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(last.1, upstream);
    }
}

/// SPEC §8: the agent's own address never reaches a client through the card route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_card_route_never_leaks_the_agent_address() {
    let agent = scripted_agent().await;
    let gw = Gateway::start(&[]);
    let card_path = "/.well-known/agent-card.json";
    for id in ["bom", "garbage", "gzip", "range", "plain"] {
        gw.register(id, &format!("{}/{id}", agent.url)).await;
    }
    let root = |id: &str| gw.url(&format!("/workspaces/{id}/a2a"));

    // A byte-order mark is tolerated: the card is rewritten like any other.
    let r = gw
        .call(
            Method::GET,
            &format!("/workspaces/bom/a2a{card_path}"),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["url"], format!("{}/", root("bom")));
    assert!(!String::from_utf8_lossy(&r.bytes).contains(&agent.url));

    // A range is not forwarded: the whole card comes back, rewritten.
    let r = gw
        .call_raw(
            Method::GET,
            &format!("/workspaces/range/a2a{card_path}"),
            None,
            None,
            &[("range", "bytes=0-39"), ("if-range", "\"x\"")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["url"], format!("{}/", root("range")));
    let seen = agent.seen.lock().unwrap().clone();
    assert!(seen.iter().all(|(_, _, range)| range.is_none()), "{seen:?}");

    // What cannot be rewritten is not passed on.
    for id in ["garbage", "gzip"] {
        let r = gw
            .call(
                Method::GET,
                &format!("/workspaces/{id}/a2a{card_path}"),
                None,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{id}");
        assert!(
            !String::from_utf8_lossy(&r.bytes).contains(&agent.url),
            "{id}"
        );
    }

    // HEAD: the headers of the rewritten card, no body.
    let get = gw
        .call(
            Method::GET,
            &format!("/workspaces/plain/a2a{card_path}"),
            None,
            None,
        )
        .await;
    let head = gw
        .call(
            Method::HEAD,
            &format!("/workspaces/plain/a2a{card_path}"),
            None,
            None,
        )
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.bytes.is_empty());
    assert_eq!(head.headers["content-length"], get.bytes.len().to_string());
    assert_eq!(head.headers["etag"], get.headers["etag"]);
}

/// A card asked for under another spelling is fetched under its one spelling and rewritten; a
/// redirect to the agent's own origin points at the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_spellings_and_redirects_point_at_the_gateway() {
    let agent = scripted_agent().await;
    let gw = Gateway::start(&[]);
    gw.register("plain", &format!("{}/plain", agent.url)).await;
    gw.register("redirect", &format!("{}/redirect", agent.url))
        .await;
    let root = gw.url("/workspaces/plain/a2a");
    for spelling in [
        "/.well-known/agent%2Dcard.json",
        "/%2Ewell-known/agent-card.json",
        "/.WELL-KNOWN/AGENT-CARD.JSON",
        "/.well-known/agent-card.json;x=1",
        "/.well-known/Agent.json",
    ] {
        let r = gw
            .call(
                Method::GET,
                &format!("/workspaces/plain/a2a{spelling}"),
                None,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{spelling}");
        assert_eq!(r.json["url"], format!("{root}/"), "{spelling}: rewritten");
        let seen = agent.seen.lock().unwrap().last().cloned().unwrap();
        assert!(
            seen.1 == "/plain/.well-known/agent-card.json"
                || seen.1 == "/plain/.well-known/agent.json",
            "{spelling} fetched as {}",
            seen.1
        );
    }
    let r = gw
        .call_raw(
            Method::POST,
            "/workspaces/redirect/a2a/x",
            None,
            Some("{}"),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        r.headers["location"],
        gw.url("/workspaces/redirect/a2a/moved").as_str()
    );
    assert_eq!(
        r.headers["content-location"],
        gw.url("/workspaces/redirect/a2a/here").as_str()
    );
    // A card that redirects is not followed or passed on.
    let r = gw
        .call(
            Method::GET,
            "/workspaces/redirect/a2a/.well-known/agent-card.json",
            None,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
}
