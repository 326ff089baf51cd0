//! `GET /workspaces/{id}/spend` through the gateway, on both stores (SPEC §13). Exactness on
//! random ledgers is the conformance suite's (`history_against_brute_force_on_random_ledgers`).

mod common;

use common::gateway::{Gateway, ADMIN};
use http::{Method, StatusCode};
use serde_json::json;

async fn spend_on(gw: &Gateway) {
    let token = gw.register("ws-h", "http://127.0.0.1:9/agent").await;
    let other = gw.register("ws-other", "http://127.0.0.1:9/agent").await;
    for (cents, seq) in [(250, 1), (400, 2)] {
        let r = gw
            .call(
                Method::POST,
                "/registry/heartbeat",
                Some(&token),
                Some(&json!({"workspace_id": "ws-h", "monthly_spend": cents, "seq": seq})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // Defaults: hourly for 7 days, the current hour included and last; every bucket present.
    let r = gw
        .call(Method::GET, "/workspaces/ws-h/spend", Some(&token), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(r.json["step"], "hour");
    let points = r.json["points"].as_array().unwrap();
    assert!((168..=169).contains(&points.len()), "{}", points.len());
    let total: i64 = points.iter().map(|p| p["spend"].as_i64().unwrap()).sum();
    assert_eq!(total, 400);
    assert_eq!(points.last().unwrap()["spend"], 400, "spent this hour");
    let last = chrono::DateTime::parse_from_rfc3339(points.last().unwrap()["at"].as_str().unwrap())
        .unwrap();
    assert_eq!(last.timestamp() % 3_600, 0, "UTC-aligned");
    // By day, admin token, explicit range with an offset.
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let r = gw
        .call(
            Method::GET,
            &format!("/workspaces/ws-h/spend?step=day&since={today}T00:00:00%2B00:00"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(
        r.json["points"],
        json!([{"at": format!("{today}T00:00:00Z"), "spend": 400}])
    );
    // Errors: a bad step or range is 400, another workspace's token 403, unknown 404.
    for bad in ["step=week", "since=tomorrow", "since=2000-01-01T00:00:00Z"] {
        let r = gw
            .call(
                Method::GET,
                &format!("/workspaces/ws-h/spend?{bad}"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {:?}", r.json);
        assert!(r.json["error"].as_str().is_some());
    }
    let r = gw
        .call(Method::GET, "/workspaces/ws-h/spend", Some(&other), None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = gw
        .call(Method::GET, "/workspaces/nobody/spend", Some(ADMIN), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = gw
        .call(Method::POST, "/workspaces/ws-h/spend", Some(ADMIN), None)
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_history_on_postgres() {
    let schema = common::pg::fresh_schema().await;
    let url = format!(
        "{}?options=-csearch_path%3D{schema}",
        common::pg::database_url()
    );
    spend_on(&Gateway::start(&["--database-url", &url])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_history_in_process() {
    spend_on(&Gateway::start(&[])).await;
}
