//! The drop-in examples run as written: `examples/axum_app.rs` and `examples/hyper_service.rs`
//! built and started as processes, and called over HTTP.

mod common;

use common::gateway::{example, Gateway};
use http::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_app_checks_its_agent_router_only() {
    let app = Gateway::start_binary(
        &example("axum_app"),
        &["127.0.0.1:0"],
        &[("ADMIN_TOKEN", "example-admin")],
    );
    let admin = Some("example-admin");
    let r = app
        .call(
            Method::POST,
            "/registry/register",
            admin,
            Some(&json!({"workspace_id": "ws-1", "url": "http://127.0.0.1:9/a"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    let token = r.json["token"].as_str().unwrap().to_owned();
    let call = || app.call(Method::POST, "/workspaces/ws-1/agent", None, None);
    let ok = call().await;
    assert_eq!(ok.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&ok.bytes).contains("hourly spend so far: 0 cents"));

    let r = app
        .call(
            Method::PATCH,
            "/workspaces/ws-1/budget",
            admin,
            Some(&json!({"budget_limits": {"hourly": 100}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app
        .call(
            Method::POST,
            "/registry/heartbeat",
            Some(&token),
            Some(&json!({"workspace_id": "ws-1", "monthly_spend": 150})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let refused = call().await;
    assert_eq!(
        refused.status,
        StatusCode::PAYMENT_REQUIRED,
        "enforced at once"
    );
    assert_eq!(refused.json["exceeded_periods"], json!(["hourly"]));
    // The app's own routes are untouched.
    let health = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(
        (health.status, &health.bytes[..]),
        (StatusCode::OK, &b"ok"[..])
    );
    let user = app.call(Method::GET, "/users/7", None, None).await;
    assert_eq!(&user.bytes[..], b"user 7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_service_checks_the_header_workspace() {
    let server = Gateway::start_binary(&example("hyper_service"), &["127.0.0.1:0"], &[]);
    async fn call(server: &Gateway, id: Option<&'static str>) -> common::gateway::Reply {
        let headers: Vec<(&str, &str)> = id.map(|v| ("x-workspace-id", v)).into_iter().collect();
        server
            .call_raw(Method::GET, "/", None, None, &headers)
            .await
    }
    let over = call(&server, Some("ws-over")).await;
    assert_eq!(over.status, StatusCode::PAYMENT_REQUIRED);
    assert!(over.headers.contains_key("retry-after"));
    assert_eq!(call(&server, Some("ws-free")).await.status, StatusCode::OK);
    let none = call(&server, None).await;
    assert_eq!(
        (none.status, &none.bytes[..]),
        (StatusCode::OK, &b"agent answer"[..])
    );
    assert_eq!(
        call(&server, Some("bad id!")).await.status,
        StatusCode::BAD_REQUEST
    );
}
