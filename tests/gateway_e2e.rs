//! The example gateway end to end: a real process on loopback, a test agent behind it, a real
//! HTTP client in front; on the in-process store and on PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::agent::{Agent, EVENTS, EVENT_SPACING};
use common::gateway::{Gateway, Reply, ADMIN};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};

async fn heartbeat(gw: &Gateway, token: &str, body: Value) -> Reply {
    gw.call(
        Method::POST,
        "/registry/heartbeat",
        Some(token),
        Some(&body),
    )
    .await
}

async fn rpc(gw: &Gateway, id: &str) -> Reply {
    gw.rpc(id).await
}

async fn budget(gw: &Gateway, id: &str) -> Reply {
    gw.call(
        Method::GET,
        &format!("/workspaces/{id}/budget"),
        Some(ADMIN),
        None,
    )
    .await
}

async fn patch(gw: &Gateway, id: &str, body: Value) -> Reply {
    gw.call(
        Method::PATCH,
        &format!("/workspaces/{id}/budget"),
        Some(ADMIN),
        Some(&body),
    )
    .await
}

/// The walk of the README: register, call, report spend, get refused with Retry-After, raise the
/// limit, block everything with 0 — and the agent card stays reachable and points at the gateway.
async fn budget_flow(gw: &Gateway) {
    let agent = Agent::start().await;
    let token = gw.register("ws-1", &agent.url()).await;

    let ok = rpc(gw, "ws-1").await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.json["result"]["message"]["parts"][0]["text"], "pong");

    assert_eq!(
        patch(gw, "ws-1", json!({"budget_limits": {"hourly": 1000}}))
            .await
            .status,
        StatusCode::OK
    );
    let hb = heartbeat(
        gw,
        &token,
        json!({"workspace_id": "ws-1", "monthly_spend": 400, "seq": 1, "status": "online"}),
    )
    .await;
    assert_eq!(
        hb.json,
        json!({"status": "ok", "recorded_delta_cents": 400})
    );
    assert_eq!(rpc(gw, "ws-1").await.status, StatusCode::OK, "400 of 1000");
    let hb = heartbeat(
        gw,
        &token,
        json!({"workspace_id": "ws-1", "monthly_spend": 1250, "seq": 2}),
    )
    .await;
    assert_eq!(hb.json["recorded_delta_cents"], 850);

    let refused = rpc(gw, "ws-1").await;
    assert_eq!(refused.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(refused.headers["content-type"], "application/json");
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (3_590..=3_600).contains(&retry),
        "the first spend leaves the hour in ~1 h: {retry}"
    );
    assert_eq!(refused.json["error"], "workspace budget limit exceeded");
    assert_eq!(refused.json["exceeded_periods"], json!(["hourly"]));
    assert_eq!(refused.json["periods"]["hourly"]["limit"], 1000);
    assert_eq!(refused.json["periods"]["hourly"]["spend"], 1250);
    assert_eq!(refused.json["periods"]["hourly"]["remaining"], -250);
    assert_eq!(
        refused.json["periods"]["hourly"]["retry_after_seconds"],
        retry
    );

    // Discovery keeps working while over budget, and the card points at the gateway.
    let card = gw
        .call(
            Method::GET,
            "/workspaces/ws-1/a2a/.well-known/agent-card.json",
            None,
            None,
        )
        .await;
    assert_eq!(card.status, StatusCode::OK);
    let root = gw.url("/workspaces/ws-1/a2a");
    assert_eq!(
        card.json["supportedInterfaces"],
        json!([
            {"url": format!("{root}/"), "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
            {"url": format!("{root}/rest"), "protocolBinding": "HTTP+JSON", "protocolVersion": "1.0"}
        ])
    );
    assert!(card.json.get("signatures").is_none());
    assert_eq!(card.json["provider"]["url"], "https://provider.example");
    assert_eq!(
        card.headers["content-length"],
        card.bytes.len().to_string().as_str()
    );
    assert_ne!(card.headers["etag"], "\"agent-etag\"", "ETag recomputed");

    // Raising the limit lets the next call through at once.
    let raised = patch(gw, "ws-1", json!({"budget_limits": {"hourly": 5000}})).await;
    assert_eq!(raised.json["periods"]["hourly"]["remaining"], 3750);
    let ok = rpc(gw, "ws-1").await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.headers["ratelimit"], "\"hourly\";r=3750");

    // 0 blocks everything, with no Retry-After: no wait helps.
    patch(gw, "ws-1", json!({"budget_limits": {"daily": 0}})).await;
    let zero = rpc(gw, "ws-1").await;
    assert_eq!(zero.status, StatusCode::PAYMENT_REQUIRED);
    assert!(zero.headers.get("retry-after").is_none());
    assert_eq!(
        zero.json["periods"]["daily"]["retry_after_seconds"],
        Value::Null
    );
    patch(gw, "ws-1", json!({"budget_limits": {"daily": null}})).await;
    assert_eq!(rpc(gw, "ws-1").await.status, StatusCode::OK);

    let get = budget(gw, "ws-1").await;
    assert_eq!(
        get.json["periods"]["hourly"],
        // 3750 more at 1250 per hour takes three hours; the 1250 leave the window within one.
        json!({"limit": 5000, "spend": 1250, "remaining": 3750, "window_seconds": 3600,
               "exhausted_in_seconds": null})
    );
    assert_eq!(get.json["alert_thresholds"], json!([80, 100]));
    assert_eq!(get.json["budget_limit"], Value::Null);
    assert_eq!(get.json["monthly_spend"], 1250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_flow_on_the_in_process_store() {
    budget_flow(&Gateway::start(&[])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_flow_on_postgres_and_a_restart_keeps_limits_spend_and_seq() {
    let schema = common::pg::fresh_schema().await;
    let base = common::pg::database_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-csearch_path%3D{schema}");
    let mut gw = Gateway::start(&["--database-url", &url]);
    budget_flow(&gw).await;
    assert!(gw.terminate().success());

    let gw = Gateway::start(&["--database-url", &url]);
    let after = budget(&gw, "ws-1").await;
    assert_eq!(after.json["periods"]["hourly"]["limit"], 5000);
    assert_eq!(after.json["periods"]["hourly"]["spend"], 1250);
    // seq 2 was the last accepted: a replay is stale, and the agent token still works.
    let list = gw.call(Method::GET, "/workspaces", Some(ADMIN), None).await;
    assert_eq!(list.json, json!({"workspaces": [{"workspace_id": "ws-1"}]}));
    let token = gw.register("ws-2", "http://127.0.0.1:9/agent").await; // a second workspace
    let stale = heartbeat(
        &gw,
        ADMIN,
        json!({"workspace_id": "ws-1", "monthly_spend": 9999, "seq": 2}),
    )
    .await;
    assert_eq!(
        stale.json,
        json!({"status": "ok", "recorded_delta_cents": 0, "stale": true})
    );
    let fresh = heartbeat(
        &gw,
        ADMIN,
        json!({"workspace_id": "ws-1", "monthly_spend": 1300, "seq": 3}),
    )
    .await;
    assert_eq!(
        fresh.json["recorded_delta_cents"], 50,
        "previous cumulative 1250 survived the restart"
    );
    assert_eq!(
        heartbeat(
            &gw,
            &token,
            json!({"workspace_id": "ws-2", "monthly_spend": 1})
        )
        .await
        .status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_patch_400_case_changes_nothing() {
    let gw = Gateway::start(&[]);
    gw.register("ws-1", "http://127.0.0.1:9/agent").await;
    patch(
        &gw,
        "ws-1",
        json!({"budget_limits": {"hourly": 100, "monthly": 2000}}),
    )
    .await;
    let before = budget(&gw, "ws-1").await.json;
    let cases: &[(&str, &str)] = &[
        ("{not json", "invalid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("{}", "must have budget_limits"),
        (r#"{"other": 1}"#, "must have budget_limits"),
        (
            r#"{"budget_limits": {"hourly": 1}, "budget_limit": 5}"#,
            "not both",
        ),
        (r#"{"budget_limits": [1]}"#, "must be a JSON object"),
        (r#"{"budget_limits": "hourly"}"#, "must be a JSON object"),
        (
            r#"{"budget_limits": {"yearly": 1}}"#,
            "allowed periods: hourly, daily, weekly, monthly",
        ),
        (r#"{"budget_limits": {"hourly": -1}}"#, "must be >= 0"),
        (
            r#"{"budget_limits": {"hourly": 1.5}}"#,
            "must be an integer",
        ),
        (
            r#"{"budget_limits": {"hourly": "100"}}"#,
            "must be an integer",
        ),
        (
            r#"{"budget_limits": {"hourly": true}}"#,
            "must be an integer",
        ),
        (
            r#"{"budget_limits": {"hourly": 9223372036854775808}}"#,
            "out of range",
        ),
        (
            r#"{"budget_limits": {"hourly": 99999999999999999999999}}"#,
            "out of range",
        ),
        (
            r#"{"budget_limits": {"daily": 5, "hourly": -1}}"#,
            "must be >= 0",
        ),
        (r#"{"budget_limit": -5}"#, "must be >= 0"),
        (r#"{"budget_limit": 1.5}"#, "must be an integer"),
        (r#"{"budget_limit": "2000"}"#, "must be an integer"),
    ];
    for (body, want) in cases {
        let r = gw
            .call_raw(
                Method::PATCH,
                "/workspaces/ws-1/budget",
                Some(ADMIN),
                Some(body),
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        let msg = r.json["error"].as_str().unwrap_or_default();
        assert!(msg.contains(want), "{body}: {msg}");
    }
    let big = format!(
        r#"{{"budget_limits": {{"hourly": 1}}, "pad": "{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let r = gw
        .call_raw(
            Method::PATCH,
            "/workspaces/ws-1/budget",
            Some(ADMIN),
            Some(&big),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(budget(&gw, "ws-1").await.json, before, "nothing changed");
    // Other top-level keys are ignored; the legacy field sets monthly only.
    let ok = patch(&gw, "ws-1", json!({"budget_limit": 3000, "note": "x"})).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.json["budget_limit"], 3000);
    assert_eq!(ok.json["periods"]["hourly"]["limit"], 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_validation_clamp_and_stale() {
    let gw = Gateway::start(&[]);
    let token = gw.register("ws-1", "http://127.0.0.1:9/agent").await;
    for (body, status) in [
        (json!({"monthly_spend": 5}), StatusCode::BAD_REQUEST),
        (
            json!({"workspace_id": 5, "monthly_spend": 5}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"workspace_id": "ws-1", "monthly_spend": 1.5}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"workspace_id": "ws-1", "monthly_spend": "5"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"workspace_id": "ws-1", "monthly_spend": true}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"workspace_id": "ws-1", "monthly_spend": 5, "seq": -1}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"workspace_id": "ws-1", "monthly_spend": 5, "seq": "1"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"workspace_id": "nobody", "monthly_spend": 5}),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let r = heartbeat(&gw, ADMIN, body.clone()).await;
        assert_eq!(r.status, status, "{body}: {:?}", r.json);
    }
    assert_eq!(
        budget(&gw, "ws-1").await.json["monthly_spend"],
        0,
        "nothing recorded by refusals"
    );
    let r = heartbeat(
        &gw,
        &token,
        json!({"workspace_id": "ws-1", "monthly_spend": -50}),
    )
    .await;
    assert_eq!(r.json["recorded_delta_cents"], 0, "negative clamps to 0");
    let r = heartbeat(
        &gw,
        &token,
        json!({"workspace_id": "ws-1", "monthly_spend": null, "current_task": "x"}),
    )
    .await;
    assert_eq!(r.json, json!({"status": "ok", "recorded_delta_cents": 0}));
    let huge = r#"{"workspace_id": "ws-1", "monthly_spend": 123456789012345678901234567890, "seq": 18446744073709551615}"#;
    let r = gw
        .call_raw(
            Method::POST,
            "/registry/heartbeat",
            Some(&token),
            Some(huge),
            &[],
        )
        .await;
    assert_eq!(
        r.json["recorded_delta_cents"], 1_000_000_000_000_i64,
        "clamped to $10 B"
    );
    let r = heartbeat(
        &gw,
        &token,
        json!({"workspace_id": "ws-1", "monthly_spend": 5, "seq": 7}),
    )
    .await;
    assert_eq!(
        r.json,
        json!({"status": "ok", "recorded_delta_cents": 0, "stale": true})
    );
}

/// No token → 401; a token nobody has → 403; a workspace token acting for another workspace or
/// on an admin route → 403; admin → allowed; unknown workspace → 404. On every route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_matrix_on_every_route() {
    let gw = Gateway::start(&[]);
    let own = gw.register("ws-1", "http://127.0.0.1:9/agent").await;
    let other = gw.register("ws-2", "http://127.0.0.1:9/agent").await;
    let hb = json!({"workspace_id": "ws-1", "monthly_spend": 0});
    let reg = json!({"workspace_id": "ws-3", "url": "http://127.0.0.1:9/x"});
    let lim = json!({"budget_limits": {"hourly": 10}});
    // (method, path, body, workspace token allowed for ws-1's own token)
    let routes: Vec<(Method, &str, Option<&Value>, bool)> = vec![
        (Method::GET, "/workspaces/ws-1/budget", None, true),
        (Method::PATCH, "/workspaces/ws-1/budget", Some(&lim), false),
        (Method::POST, "/registry/heartbeat", Some(&hb), true),
        (Method::GET, "/workspaces", None, false),
        (Method::POST, "/registry/register", Some(&reg), false),
        (Method::DELETE, "/workspaces/ws-2", None, false),
    ];
    for (method, path, body, own_allowed) in &routes {
        let none = gw.call(method.clone(), path, None, *body).await;
        assert_eq!(
            none.status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without token"
        );
        let basic = gw
            .call_raw(
                method.clone(),
                path,
                None,
                body.map(|b| b.to_string()).as_deref(),
                &[("authorization", "Basic dXNlcjpwYXNz")],
            )
            .await;
        assert_eq!(
            basic.status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with Basic"
        );
        let wrong = gw
            .call(method.clone(), path, Some("nobody-has-this"), *body)
            .await;
        assert_eq!(
            wrong.status,
            StatusCode::FORBIDDEN,
            "{method} {path} with an unknown token"
        );
        let by_other = gw.call(method.clone(), path, Some(&other), *body).await;
        assert_eq!(
            by_other.status,
            StatusCode::FORBIDDEN,
            "{method} {path} with ws-2's token"
        );
        let by_own = gw.call(method.clone(), path, Some(&own), *body).await;
        let want = if *own_allowed {
            StatusCode::OK
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(by_own.status, want, "{method} {path} with ws-1's token");
    }
    for (method, path, body, _) in &routes {
        let admin = gw.call(method.clone(), path, Some(ADMIN), *body).await;
        assert_eq!(
            admin.status,
            StatusCode::OK,
            "{method} {path} as admin: {:?}",
            admin.json
        );
    }
    // Order: the body is validated before the workspace check, and 404 comes last.
    let bad_body = gw
        .call_raw(
            Method::POST,
            "/registry/heartbeat",
            Some(&other),
            Some("{"),
            &[],
        )
        .await;
    assert_eq!(bad_body.status, StatusCode::BAD_REQUEST);
    let unknown = gw
        .call(Method::GET, "/workspaces/ghost/budget", Some(ADMIN), None)
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    // ws-2 was deleted above: its own token now meets 404, and it is not listed.
    let gone = heartbeat(
        &gw,
        &other,
        json!({"workspace_id": "ws-2", "monthly_spend": 1}),
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(
        gw.call(Method::DELETE, "/workspaces/ws-2", Some(ADMIN), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        gw.call(Method::GET, "/workspaces/ws-2/a2a", None, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let listed = gw
        .call(Method::GET, "/workspaces", Some(ADMIN), None)
        .await
        .json;
    assert_eq!(
        listed,
        json!({"workspaces": [{"workspace_id": "ws-1"}, {"workspace_id": "ws-3"}]})
    );
    // Registering again rotates the token: the old one stops working at once.
    let rotated = gw.register("ws-1", "http://127.0.0.1:9/agent").await;
    assert_eq!(
        gw.call(Method::GET, "/workspaces/ws-1/budget", Some(&own), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        gw.call(Method::GET, "/workspaces/ws-1/budget", Some(&rotated), None)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_through_in_id_order() {
    let gw = Gateway::start(&[]);
    for i in 0..5 {
        gw.register(&format!("w{i}"), "http://127.0.0.1:9/a").await;
    }
    let page = gw
        .call(Method::GET, "/workspaces?limit=2", Some(ADMIN), None)
        .await
        .json;
    assert_eq!(
        page,
        json!({"workspaces": [{"workspace_id": "w0"}, {"workspace_id": "w1"}], "next_after": "w1"})
    );
    let page = gw
        .call(
            Method::GET,
            "/workspaces?after=w1&limit=2",
            Some(ADMIN),
            None,
        )
        .await
        .json;
    assert_eq!(page["next_after"], "w3");
    let last = gw
        .call(
            Method::GET,
            "/workspaces?after=w3&limit=2",
            Some(ADMIN),
            None,
        )
        .await
        .json;
    assert_eq!(last, json!({"workspaces": [{"workspace_id": "w4"}]}));
    assert_eq!(
        gw.call(Method::GET, "/workspaces?limit=x", Some(ADMIN), None)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        gw.call(Method::GET, "/workspaces?limit=99999", Some(ADMIN), None)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_spaced_as_the_agent_sent_them() {
    let gw = Gateway::start(&[]);
    let agent = Agent::start().await;
    gw.register("ws-1", &agent.url()).await;
    let body = json!({"jsonrpc": "2.0", "id": "s", "method": "SendStreamingMessage", "params": {}})
        .to_string();
    let req = http::Request::post(gw.url("/workspaces/ws-1/a2a/"))
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let res = gw.client.request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Some(frame) = tokio::time::timeout_at(deadline.into(), body.frame())
        .await
        .expect("stream ended in time")
    {
        if let Ok(data) = frame.unwrap().into_data() {
            arrivals.push(Instant::now());
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    assert_eq!(text.matches("data: ").count(), EVENTS, "{text}");
    assert_eq!(
        arrivals.len(),
        EVENTS,
        "one chunk per event: nothing was buffered together"
    );
    for pair in arrivals.windows(2) {
        assert!(
            pair[1] - pair[0] >= EVENT_SPACING / 2,
            "events arrived together: {:?}",
            pair[1] - pair[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_keeps_query_and_authorization_drops_hop_by_hop_and_maps_errors() {
    let gw = Gateway::start(&["--upstream-timeout-ms", "500"]);
    let agent = Agent::start().await;
    gw.register("ws-1", &agent.url()).await;
    let echo = gw
        .call_raw(
            Method::POST,
            "/workspaces/ws-1/a2a/echo/x?y=1&z=2",
            Some("agent-level-credential"),
            Some("{}"),
            &[
                ("connection", "x-hop"),
                ("x-hop", "drop me"),
                ("x-keep", "keep me"),
            ],
        )
        .await;
    assert_eq!(echo.status, StatusCode::OK);
    assert_eq!(echo.json["path"], "/agent/echo/x");
    assert_eq!(echo.json["query"], "y=1&z=2");
    let headers = &echo.json["headers"];
    assert_eq!(
        headers["authorization"], "Bearer agent-level-credential",
        "the caller's credential reaches the agent"
    );
    assert_eq!(headers["x-keep"], "keep me");
    assert!(
        headers.get("x-hop").is_none(),
        "named in Connection: dropped"
    );
    assert_eq!(headers["host"], agent.addr.to_string());

    let asked = Instant::now();
    let slow = gw
        .call(Method::GET, "/workspaces/ws-1/a2a/slow", None, None)
        .await;
    let waited = asked.elapsed();
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT);
    // The agent answers after 3 s; the 500 ms timeout is never cut short, and kept to within
    // its timer's tick (25 ms), with room for a slow machine.
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_millis(2500),
        "504 after {waited:?}"
    );
    assert!(slow.json["error"].is_string());
    let unregistered = gw
        .call(Method::GET, "/workspaces/ghost/a2a", None, None)
        .await;
    assert_eq!(unregistered.status, StatusCode::NOT_FOUND);
    assert!(unregistered.json["error"].is_string());
    agent.stop();
    let down = rpc(&gw, "ws-1").await;
    assert_eq!(down.status, StatusCode::BAD_GATEWAY);
    assert!(down.json["error"].is_string());
    // An agent that never listened at all.
    gw.register("ws-2", "http://127.0.0.1:9/agent").await;
    assert_eq!(rpc(&gw, "ws-2").await.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_endpoints_and_the_budget_page() {
    let gw = Gateway::start(&[]);
    let agent = Agent::start().await;
    gw.register("ws-1", &agent.url()).await;
    patch(&gw, "ws-1", json!({"budget_limits": {"hourly": 0}})).await;
    assert_eq!(rpc(&gw, "ws-1").await.status, StatusCode::PAYMENT_REQUIRED);
    let health = gw.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(health.json, json!({"status": "ok", "store": "memory"}));
    let metrics = gw.call(Method::GET, "/metrics", None, None).await;
    let text = std::str::from_utf8(&metrics.bytes).unwrap();
    assert!(
        text.contains(r#"tower_budget_decisions_total{decision="blocked"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tower_budget_blocked_total{period="hourly"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("gateway_requests_total{route=\"proxy\",status=\"402\"}"),
        "{text}"
    );
    assert!(text.contains("gateway_request_duration_seconds"), "{text}");
    let page = gw.call(Method::GET, "/ui", None, None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(std::str::from_utf8(&page.bytes)
        .unwrap()
        .contains("role=\"progressbar\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_then_exits_0() {
    let mut gw = Gateway::start(&[]);
    let agent = Agent::start().await;
    gw.register("ws-1", &agent.url()).await;
    // A stream is in flight (its events take 2 × EVENT_SPACING) when SIGTERM arrives.
    let req = http::Request::post(gw.url("/workspaces/ws-1/a2a"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            r#"{"jsonrpc":"2.0","id":"s","method":"SendStreamingMessage"}"#,
        )))
        .unwrap();
    let res = gw.client.request(req).await.unwrap();
    let reading =
        tokio::spawn(async move { res.into_body().collect().await.map(|b| b.to_bytes()) });
    let status = tokio::task::spawn_blocking(move || gw.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    let body = reading
        .await
        .unwrap()
        .expect("the in-flight stream completed");
    assert_eq!(
        String::from_utf8_lossy(&body).matches("data: ").count(),
        EVENTS
    );
}

/// Requests that never end, on every serving thread: SIGTERM waits for them (the grace), a
/// second signal exits at once — no thread's connections hold the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_whatever_runs_on_any_thread() {
    // An agent that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/agent", silent.local_addr().unwrap());
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = reached.clone();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let mut gw = Gateway::start(&[]);
    gw.register("ws-1", &silent_url).await;
    // One connection each (a fresh client per request): connections go to the threads in turn.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut pending = Vec::new();
    for _ in 0..threads * 2 {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let req = http::Request::post(gw.url("/workspaces/ws-1/a2a"))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap();
        pending.push(tokio::spawn(async move { client.request(req).await }));
    }
    let pid = gw.child.id().to_string();
    // Every request has reached the silent agent before the signals.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while reached.load(std::sync::atomic::Ordering::SeqCst) < threads * 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the requests did not reach the agent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "the first signal waits for the requests in flight"
    );
    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || gw.terminate())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the second signal took {:?}",
        started.elapsed()
    );
    assert!(status.success(), "exit status {status:?}");
    for p in pending {
        p.abort();
    }
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_admin_token_and_bad_flags() {
    let gw = Gateway::start_raw(&["--listen", "127.0.0.1:0"], &[]);
    let token = gw
        .printed_token
        .clone()
        .expect("an admin token is printed when none is given");
    assert_eq!(
        gw.call(Method::GET, "/workspaces", Some(&token), None)
            .await
            .status,
        StatusCode::OK
    );
    let env = Gateway::start_raw(
        &[],
        &[
            ("GATEWAY_LISTEN", "127.0.0.1:0"),
            ("GATEWAY_ADMIN_TOKEN", "from-env"),
        ],
    );
    assert!(env.printed_token.is_none());
    assert_eq!(
        env.call(Method::GET, "/workspaces", Some("from-env"), None)
            .await
            .status,
        StatusCode::OK
    );

    for bad in [
        vec!["--listen", "nope"],
        vec!["--check-timeout-ms", "0"],
        vec!["--cache-ttl-ms", "-1"],
        vec!["--public-url", "ftp://x"],
    ] {
        let out = std::process::Command::new(common::gateway::binary())
            .args(&bad)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{bad:?}: one line, got {err}"
        );
    }
    let help = std::process::Command::new(common::gateway::binary())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--listen",
        "GATEWAY_LISTEN",
        "--public-url",
        "GATEWAY_PUBLIC_URL",
        "--admin-token",
        "GATEWAY_ADMIN_TOKEN",
        "--database-url",
        "DATABASE_URL",
        "--cache-ttl-ms",
        "GATEWAY_CACHE_TTL_MS",
        "--check-timeout-ms",
        "GATEWAY_CHECK_TIMEOUT_MS",
        "--fail-closed",
        "GATEWAY_FAIL_CLOSED",
        "--upstream-timeout-ms",
        "GATEWAY_UPSTREAM_TIMEOUT_MS",
    ] {
        assert!(help.contains(flag), "--help documents {flag}");
    }
}

/// The gateway serves HTTP/1.1 and HTTP/2 with prior knowledge on one port, told apart by the
/// connection's first bytes: both reach the local routes and the proxy, with the budget check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_with_prior_knowledge_share_the_port() {
    let agent = Agent::start().await;
    let gw = Gateway::start(&[]);
    gw.register("ws-1", &agent.url()).await;
    gw.patch_limits("ws-1", json!({"hourly": 100})).await;
    for http2 in [false, true] {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(http2)
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let version = if http2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        let health = http::Request::get(gw.url("/healthz"))
            .body(http_body_util::Full::default())
            .unwrap();
        let health = client.request(health).await.unwrap();
        assert_eq!(health.status(), StatusCode::OK, "{version:?}");
        assert_eq!(health.version(), version);
        let call = http::Request::post(gw.url("/workspaces/ws-1/a2a/echo"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap();
        let response = client.request(call).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{version:?}");
        assert_eq!(response.version(), version);
        assert!(
            response.headers().contains_key("ratelimit"),
            "{version:?}: checked against the budget"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let echoed: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(echoed["path"], "/agent/echo", "{version:?}");
        assert_eq!(echoed["body_len"], 2, "{version:?}");
    }
}

/// The registered URL's path and the path below `/a2a` are joined with one slash, the query
/// follows, user info never reaches the agent; an agent URL the proxy cannot use is a 502 that
/// says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_paths_are_joined_and_unusable_agent_urls_are_502() {
    let agent = Agent::start().await;
    let gw = Gateway::start(&[]);
    let addr = agent.addr.to_string();
    for (registered, asked, reached, query) in [
        (
            format!("http://{addr}"),
            "/workspaces/ws-1/a2a/agent/echo?q=1",
            "/agent/echo",
            json!("q=1"),
        ),
        (
            format!("http://{addr}/agent/"),
            "/workspaces/ws-1/a2a/echo/x",
            "/agent/echo/x",
            Value::Null,
        ),
        (
            format!("HTTP://user:pw@{addr}/agent"),
            "/workspaces/ws-1/a2a/echo",
            "/agent/echo",
            Value::Null,
        ),
    ] {
        gw.register("ws-1", &registered).await;
        let r = gw
            .call_raw(Method::POST, asked, None, Some("{}"), &[])
            .await;
        assert_eq!(r.status, StatusCode::OK, "{registered} {asked}");
        assert_eq!(r.json["path"], reached, "{registered} {asked}");
        assert_eq!(r.json["query"], query, "{registered} {asked}");
        assert_eq!(r.json["headers"]["host"], addr.as_str(), "{registered}");
    }
    gw.register("ws-2", &format!("https://{addr}/agent")).await;
    let r = rpc(&gw, "ws-2").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(
        r.json["error"].as_str().unwrap().contains("https://"),
        "{:?}",
        r.json
    );
}

/// Idle keep-alive connections, HTTP/1 and HTTP/2, on every serving thread, do not hold a
/// SIGTERM back: each thread wakes its connections and they close at once (the header read
/// timeout is 10 s and HTTP/2's ping 30 s, so a drain that woke nobody would take that long).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_keep_alive_connections_at_once() {
    let mut gw = Gateway::start(&[]);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut clients = Vec::new();
    // A fresh client per connection; connections go to the threads in turn.
    for i in 0..threads * 2 {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(i % 2 == 1)
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let health = http::Request::get(gw.url("/healthz"))
            .body(http_body_util::Full::default())
            .unwrap();
        let response = client.request(health).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
        clients.push(client); // keeps its idle connection open
    }
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || gw.signal("-TERM"))
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exited {:?} after SIGTERM",
        started.elapsed()
    );
    drop(clients);
}
