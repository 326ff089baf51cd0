//! `GET /workspaces/{id}/spend` and `GET /workspaces?include=status` through the gateway, on
//! both stores (SPEC §13). Exactness on random ledgers is the conformance suite's
//! (`history_against_brute_force_on_random_ledgers`, `list_reports_agree_with_each_report`).

mod common;

use common::gateway::{Gateway, ADMIN};
use http::{Method, StatusCode};
use serde_json::{json, Value};

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

/// Splits off the two fields that count seconds from now (two reads a moment apart may differ
/// by a second); returns them per period.
fn split_timers(budget: &mut Value) -> Vec<(String, Value, Value)> {
    let mut timers = Vec::new();
    for (period, line) in budget["periods"].as_object_mut().unwrap() {
        let line = line.as_object_mut().unwrap();
        let retry = line.remove("retry_after_seconds").unwrap_or(Value::Null);
        let exhausted = line.remove("exhausted_in_seconds").unwrap();
        timers.push((period.clone(), retry, exhausted));
    }
    timers
}

fn close(a: &Value, b: &Value) -> bool {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 2,
        _ => a == b,
    }
}

/// `GET /workspaces?include=status`: every page entry is the workspace's budget GET plus its
/// exceeded periods; paging as without it; a bad `include` is 400, a workspace token 403.
async fn overview_on(gw: &Gateway) {
    for (id, cents, limits) in [
        ("ov-a", 1250, json!({"hourly": 1000, "monthly": 0})),
        ("ov-b", 0, json!({})),
        ("ov-c", 2000, json!({"daily": 5000})),
    ] {
        let token = gw.register(id, "http://127.0.0.1:9/agent").await;
        let r = gw
            .call(
                Method::PATCH,
                &format!("/workspaces/{id}/budget"),
                Some(ADMIN),
                Some(&json!({ "budget_limits": limits })),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
        if cents > 0 {
            let body = json!({"workspace_id": id, "monthly_spend": cents});
            let r = gw
                .call(
                    Method::POST,
                    "/registry/heartbeat",
                    Some(&token),
                    Some(&body),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK);
        }
    }
    let mut listed = Vec::new();
    let mut query = "/workspaces?include=status&limit=2".to_owned();
    loop {
        let r = gw.call(Method::GET, &query, Some(ADMIN), None).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
        listed.extend(r.json["workspaces"].as_array().unwrap().iter().cloned());
        match r.json["next_after"].as_str() {
            Some(after) => query = format!("/workspaces?include=status&limit=2&after={after}"),
            None => break,
        }
    }
    let ids: Vec<_> = listed.iter().map(|w| w["workspace_id"].clone()).collect();
    assert_eq!(ids, [json!("ov-a"), json!("ov-b"), json!("ov-c")]);
    let exceeded: Vec<_> = listed
        .iter()
        .map(|w| w["exceeded_periods"].clone())
        .collect();
    assert_eq!(
        exceeded,
        [json!(["hourly", "monthly"]), json!([]), json!([])]
    );
    for mut entry in listed {
        let id = entry["workspace_id"].as_str().unwrap().to_owned();
        let mut budget = gw
            .call(
                Method::GET,
                &format!("/workspaces/{id}/budget"),
                Some(ADMIN),
                None,
            )
            .await
            .json;
        let (listed_timers, timers) = (split_timers(&mut entry), split_timers(&mut budget));
        for ((p, r1, e1), (_, r2, e2)) in listed_timers.iter().zip(&timers) {
            assert!(
                close(r1, r2) && close(e1, e2),
                "{id} {p}: {r1} {e1} vs {r2} {e2}"
            );
        }
        let entry = entry.as_object_mut().unwrap();
        entry.remove("workspace_id");
        entry.remove("exceeded_periods");
        assert_eq!(Value::Object(entry.clone()), budget, "{id}");
    }
    let a = &gw
        .call(Method::GET, "/workspaces?include=status", Some(ADMIN), None)
        .await
        .json["workspaces"][0];
    let hourly = a["periods"]["hourly"]["retry_after_seconds"]
        .as_i64()
        .unwrap();
    assert!((3_590..=3_600).contains(&hourly), "{a}");
    assert_eq!(
        a["periods"]["monthly"]["retry_after_seconds"],
        Value::Null,
        "0 never unblocks"
    );
    let plain = gw
        .call(Method::GET, "/workspaces?limit=1", Some(ADMIN), None)
        .await;
    assert_eq!(plain.json["workspaces"], json!([{"workspace_id": "ov-a"}]));
    let r = gw
        .call(
            Method::GET,
            "/workspaces?include=everything",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.json);
    let token = gw.register("ov-d", "http://127.0.0.1:9/agent").await;
    let r = gw
        .call(
            Method::GET,
            "/workspaces?include=status",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

async fn on_postgres() -> Gateway {
    let schema = common::pg::fresh_schema().await;
    let url = format!(
        "{}?options=-csearch_path%3D{schema}",
        common::pg::database_url()
    );
    Gateway::start(&["--database-url", &url])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_history_on_postgres() {
    spend_on(&on_postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_history_in_process() {
    spend_on(&Gateway::start(&[])).await;
}

/// Every id of the listing, page by page (`limit=1`), with or without status.
async fn all_ids(gw: &Gateway, status: bool) -> Vec<String> {
    let include = if status { "&include=status" } else { "" };
    let mut ids = Vec::new();
    let mut after = String::new();
    loop {
        let r = gw
            .call(
                Method::GET,
                &format!("/workspaces?limit=1{include}{after}"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
        for w in r.json["workspaces"].as_array().unwrap() {
            ids.push(w["workspace_id"].as_str().unwrap().to_owned());
        }
        match r.json["next_after"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return ids,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_on_postgres() {
    let schema = common::pg::fresh_schema().await;
    let url = format!(
        "{}?options=-csearch_path%3D{schema}",
        common::pg::database_url()
    );
    let gw = Gateway::start(&["--database-url", &url]);
    overview_on(&gw).await;
    // Ids no `WorkspaceId` accepts, written by other software, between valid ones: skipped,
    // and the paging goes on past them.
    common::pg::admin_execute(&format!(
        "SET search_path TO {schema}; INSERT INTO workspaces (id) VALUES ('ov-a x'), ('ov-b/..'), ('ov-c\u{e9}')"
    ))
    .await;
    let want = ["ov-a", "ov-b", "ov-c", "ov-d"];
    assert_eq!(all_ids(&gw, false).await, want);
    assert_eq!(all_ids(&gw, true).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_in_process() {
    overview_on(&Gateway::start(&[])).await;
}
