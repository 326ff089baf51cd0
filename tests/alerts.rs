//! Alerts through the gateway on a real PostgreSQL (SPEC §12): thresholds in the budget API,
//! exactly one event per crossing with concurrent heartbeats on two processes, signed
//! deliveries that survive a receiver outage and a gateway restart, and recoveries.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::gateway::{Gateway, Reply, ADMIN};
use common::receiver::{Received, Receiver};
use hmac::{Hmac, Mac};
use http::{Method, StatusCode};
use serde_json::{json, Value};

const SECRET: &str = "alert-test-secret";
/// Deliveries are polled every second; a few rounds of slack on a busy debug build.
const DELIVERY: Duration = Duration::from_secs(20);

fn url_for(schema: &str) -> String {
    format!(
        "{}?options=-csearch_path%3D{schema}",
        common::pg::database_url()
    )
}

fn gateway(url: &str, receiver: &Receiver) -> Gateway {
    Gateway::start(&[
        "--database-url",
        url,
        "--alert-webhook",
        &receiver.url(),
        "--alert-secret",
        SECRET,
    ])
}

async fn patch(gw: &Gateway, id: &str, body: &Value) -> Reply {
    gw.call(
        Method::PATCH,
        &format!("/workspaces/{id}/budget"),
        Some(ADMIN),
        Some(body),
    )
    .await
}

async fn heartbeat(gw: &Gateway, token: &str, id: &str, cents: i64, seq: u64) {
    let r = gw
        .call(
            Method::POST,
            "/registry/heartbeat",
            Some(token),
            Some(&json!({"workspace_id": id, "monthly_spend": cents, "seq": seq})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
}

/// The signature header checked with an HMAC computed here, and the body parsed.
fn verified(r: &Received) -> Value {
    let header = r
        .headers
        .get("budget-signature")
        .expect("every POST is signed")
        .to_str()
        .unwrap();
    let (t, v1) = header
        .split_once(',')
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
        .unwrap_or_else(|| panic!("malformed signature {header}"));
    let sent: i64 = t.parse().unwrap();
    assert!(
        (sent - chrono::Utc::now().timestamp()).abs() < 300,
        "t is the time of sending"
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1, want, "signature over t.body");
    assert_eq!(r.headers["content-type"], "application/json");
    r.json.clone()
}

async fn outbox_len(schema: &str) -> i64 {
    common::pg::admin_query_i64(&format!(
        "SELECT count(*) FROM {schema}.budget_alert_outbox"
    ))
    .await
}

async fn until_outbox_empty(schema: &str) {
    let deadline = Instant::now() + DELIVERY;
    while outbox_len(schema).await > 0 {
        assert!(
            Instant::now() < deadline,
            "outbox not empty within {DELIVERY:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_through_the_api_and_every_400_changes_nothing() {
    let schema = common::pg::fresh_schema().await;
    let gw = Gateway::start(&["--database-url", &url_for(&schema)]);
    let token = gw.register("ws-t", "http://127.0.0.1:9/agent").await;
    let r = gw.budget("ws-t", &token).await;
    assert_eq!(r.json["alert_thresholds"], json!([80, 100]), "the default");
    assert_eq!(
        r.json["periods"]["hourly"]["exhausted_in_seconds"],
        Value::Null
    );

    let r = patch(
        &gw,
        "ws-t",
        &json!({"budget_limits": {"hourly": 1000}, "alert_thresholds": [100, 50, 80, 50]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(r.json["alert_thresholds"], json!([50, 80, 100]));
    let before = gw.budget("ws-t", &token).await.json;
    assert_eq!(before["periods"]["hourly"]["limit"], 1000);
    assert_eq!(before["alert_thresholds"], json!([50, 80, 100]));

    let eleven: Vec<u16> = (1..=11).collect();
    for body in [
        json!({"alert_thresholds": [0], "budget_limits": {"hourly": 5}}),
        json!({"alert_thresholds": [1001], "budget_limits": {"hourly": 5}}),
        json!({"alert_thresholds": [-50], "budget_limits": {"hourly": 5}}),
        json!({"alert_thresholds": [50.5], "budget_limits": {"hourly": 5}}),
        json!({"alert_thresholds": [1e2], "budget_limits": {"hourly": 5}}),
        json!({"alert_thresholds": ["80"], "budget_limits": {"hourly": 5}}),
        json!({"alert_thresholds": [true], "budget_limit": 5}),
        json!({"alert_thresholds": [[80]], "budget_limits": {"hourly": 5}}),
        json!({"alert_thresholds": 80, "budget_limits": {"hourly": 5}}),
        json!({"alert_thresholds": {"hourly": 80}, "budget_limits": {"hourly": 5}}),
        json!({"alert_thresholds": "80,100", "budget_limits": {"hourly": 5}}),
        json!({"alert_thresholds": eleven, "budget_limits": {"hourly": 5}}),
        json!({"alert_thresholds": [10], "budget_limits": {"hourly": -5}}),
        json!({"alert_thresholds": [10], "budget_limits": {"yearly": 5}}),
        json!({"alert_thresholds": [10], "budget_limits": {"hourly": 5}, "budget_limit": 5}),
        json!({"alert_threshold": [10]}),
    ] {
        let r = patch(&gw, "ws-t", &body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {:?}", r.json);
        assert!(r.json["error"].as_str().is_some_and(|e| !e.is_empty()));
        assert_eq!(
            gw.budget("ws-t", &token).await.json,
            before,
            "{body} changed something"
        );
    }
    // A workspace's own token reads, but does not set, its thresholds.
    let r = gw
        .call(
            Method::PATCH,
            "/workspaces/ws-t/budget",
            Some(&token),
            Some(&json!({"alert_thresholds": [10]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // `null` restores the default; the limits stay.
    let r = patch(&gw, "ws-t", &json!({"alert_thresholds": null})).await;
    assert_eq!(r.json["alert_thresholds"], json!([80, 100]));
    assert_eq!(r.json["periods"]["hourly"]["limit"], 1000);
    // An unknown workspace: 404, whatever the thresholds.
    let r = patch(&gw, "nobody", &json!({"alert_thresholds": [50]})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_concurrent_heartbeats_on_two_gateways_give_one_event_per_crossing() {
    let schema = common::pg::fresh_schema().await;
    let url = url_for(&schema);
    let receiver = Receiver::start().await;
    let a = gateway(&url, &receiver);
    let b = gateway(&url, &receiver);
    let token = a.register("ws-c", "http://127.0.0.1:9/agent").await;
    let r = patch(
        &a,
        "ws-c",
        &json!({"budget_limits": {"hourly": 3000, "daily": 6000}, "alert_thresholds": [25, 50, 75, 100]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    // 30 reports at once, half through each process, in shuffled order: each records what it
    // adds over the last one applied.
    let mut seqs: Vec<u64> = (1..=30).collect();
    fastrand::shuffle(&mut seqs);
    let calls = seqs.iter().enumerate().map(|(i, &seq)| {
        let gw = if i % 2 == 0 { &a } else { &b };
        heartbeat(gw, &token, "ws-c", 100 * seq as i64, seq)
    });
    futures_util::future::join_all(calls).await;

    // Spend is 3000: every hourly threshold, and daily 25 and 50 — one event each.
    let mut want = BTreeMap::new();
    for t in [25, 50, 75, 100] {
        want.insert(("hourly".to_string(), t), 1);
    }
    for t in [25, 50] {
        want.insert(("daily".to_string(), t), 1);
    }
    receiver
        .until(DELIVERY, "six events", |got| got.len() >= 6)
        .await;
    until_outbox_empty(&schema).await;
    let events: Vec<Value> = receiver.received().iter().map(verified).collect();
    let mut got = BTreeMap::new();
    for e in &events {
        assert_eq!(e["type"], "budget.threshold_crossed");
        assert_eq!(e["workspace_id"], "ws-c");
        *got.entry((
            e["period"].as_str().unwrap().to_owned(),
            e["threshold"].as_u64().unwrap(),
        ))
        .or_insert(0) += 1;
        let limit = if e["period"] == "hourly" { 3000 } else { 6000 };
        assert_eq!(e["limit"], limit);
        let spend = e["spend"].as_i64().unwrap();
        assert!(
            spend * 100 >= e["threshold"].as_i64().unwrap() * limit,
            "{e}"
        );
        assert!(chrono::DateTime::parse_from_rfc3339(e["at"].as_str().unwrap()).is_ok());
    }
    assert_eq!(got, want, "exactly one event per crossing: {events:?}");
    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "unique ids");
    let delivered = a
        .metric("tower_budget_alert_events_total{type=\"budget.threshold_crossed\"}")
        .await
        + b.metric("tower_budget_alert_events_total{type=\"budget.threshold_crossed\"}")
            .await;
    assert_eq!(delivered, 6.0, "each event delivered by one of the two");

    // One heartbeat that crosses two thresholds gives two events.
    let token2 = a.register("ws-two", "http://127.0.0.1:9/agent").await;
    patch(
        &b,
        "ws-two",
        &json!({"budget_limits": {"daily": 1000}, "alert_thresholds": [50, 80]}),
    )
    .await;
    heartbeat(&b, &token2, "ws-two", 850, 1).await;
    receiver
        .until(DELIVERY, "two more events", |got| got.len() >= 8)
        .await;
    until_outbox_empty(&schema).await;
    let two: Vec<Value> = receiver.received()[6..].iter().map(verified).collect();
    assert_eq!(two.len(), 2);
    assert_eq!(
        two.iter()
            .map(|e| (
                e["threshold"].as_u64().unwrap(),
                e["spend"].as_i64().unwrap()
            ))
            .collect::<Vec<_>>(),
        [(50, 850), (80, 850)],
        "in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_survives_a_receiver_outage_and_a_gateway_restart() {
    let schema = common::pg::fresh_schema().await;
    let url = url_for(&schema);
    let receiver = Receiver::start().await;
    receiver.answer(StatusCode::SERVICE_UNAVAILABLE);
    let mut a = gateway(&url, &receiver);
    let token = a.register("ws-o", "http://127.0.0.1:9/agent").await;
    patch(&a, "ws-o", &json!({"budget_limits": {"hourly": 1000}})).await;
    heartbeat(&a, &token, "ws-o", 900, 1).await;
    // Refused twice, with the same event each time.
    receiver
        .until(DELIVERY, "two refused attempts", |got| got.len() >= 2)
        .await;
    let refused: Vec<Value> = receiver.received().iter().map(verified).collect();
    assert_eq!(refused[0], refused[1], "the same body, id included");
    assert_eq!(refused[0]["threshold"], 80);
    assert!(a.metric("tower_budget_alert_delivery_failures_total").await >= 2.0);
    assert_eq!(a.terminate().code(), Some(0));
    assert_eq!(outbox_len(&schema).await, 1, "still waiting, stored");

    // The receiver is back; a new process delivers the very same event.
    receiver.answer(StatusCode::OK);
    let b = gateway(&url, &receiver);
    receiver
        .until(DELIVERY, "delivery after the restart", |got| {
            got.iter().any(|r| r.answered.is_success())
        })
        .await;
    let delivered = receiver.delivered();
    assert_eq!(delivered.len(), 1);
    assert_eq!(verified(&delivered[0]), refused[0]);
    until_outbox_empty(&schema).await;
    assert_eq!(
        b.metric("tower_budget_alert_events_total{type=\"budget.threshold_crossed\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_limit_of_an_exceeded_period_is_a_recovery() {
    let schema = common::pg::fresh_schema().await;
    let receiver = Receiver::start().await;
    let gw = gateway(&url_for(&schema), &receiver);
    let agent = common::agent::Agent::start().await;
    let token = gw.register("ws-r", &agent.url()).await;
    patch(&gw, "ws-r", &json!({"budget_limits": {"hourly": 500}})).await;
    heartbeat(&gw, &token, "ws-r", 600, 1).await;
    let blocked = gw.rpc("ws-r").await;
    assert_eq!(blocked.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(blocked.json["periods"]["hourly"]["exhausted_in_seconds"], 0);
    let budget = gw.budget("ws-r", &token).await.json;
    assert_eq!(budget["periods"]["hourly"]["exhausted_in_seconds"], 0);
    assert_eq!(
        budget["periods"]["daily"]["exhausted_in_seconds"],
        Value::Null
    );
    // SPEC §13: the GET's exceeded period says when it unblocks, as the 402 body does.
    let unblocks = budget["periods"]["hourly"]["retry_after_seconds"]
        .as_u64()
        .unwrap();
    assert!((3_500..=3_600).contains(&unblocks), "{unblocks}");
    let in_402 = blocked.json["periods"]["hourly"]["retry_after_seconds"]
        .as_u64()
        .unwrap();
    assert!(in_402.abs_diff(unblocks) <= 5, "{in_402} vs {unblocks}");
    assert!(budget["periods"]["daily"]
        .get("retry_after_seconds")
        .is_none());
    receiver
        .until(DELIVERY, "80 and 100", |got| got.len() >= 2)
        .await;

    let r = patch(&gw, "ws-r", &json!({"budget_limits": {"hourly": 2000}})).await;
    // 600 spent in the last minute, 1400 to go at 600 per hour: 8400 s, but the 600 leave the
    // hourly window after 3600 s — so not within the hour.
    assert_eq!(
        r.json["periods"]["hourly"]["exhausted_in_seconds"],
        Value::Null
    );
    receiver
        .until(DELIVERY, "recovered", |got| got.len() >= 3)
        .await;
    let recovered = verified(&receiver.received()[2]);
    assert_eq!(recovered["type"], "budget.recovered");
    assert_eq!(recovered["period"], "hourly");
    assert_eq!(recovered["threshold"], 100);
    assert_eq!(recovered["limit"], 2000);
    assert_eq!(recovered["spend"], 600);
    assert_eq!(gw.rpc("ws-r").await.status, StatusCode::OK);
    // With a daily limit, the same rate does reach it within the day.
    let r = patch(&gw, "ws-r", &json!({"budget_limits": {"daily": 1800}})).await;
    let secs = r.json["periods"]["daily"]["exhausted_in_seconds"]
        .as_u64()
        .unwrap();
    assert_eq!(secs, 7_200, "1200 cents at 600 per hour");
}

/// The README's Slack-style relay (`scripts/alert_relay.py`) verifies the gateway's signature
/// and forwards one line per event; a forged POST is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_relay_verifies_and_forwards() {
    use std::io::{BufRead, BufReader};
    let slack = Receiver::start().await;
    /// Stops the relay this test started, by its handle, however the test ends.
    struct Relay(std::process::Child);
    impl Drop for Relay {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut relay = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/alert_relay.py"
        ))
        .arg("0")
        .env("GATEWAY_ALERT_SECRET", SECRET)
        .env("SLACK_WEBHOOK_URL", slack.url())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map(Relay)
        .expect("python3 runs the relay");
    let mut line = String::new();
    BufReader::new(relay.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .parse()
        .unwrap();
    let relay_url = format!("http://127.0.0.1:{port}/");

    // A forged POST: refused, nothing forwarded.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let forged = http::Request::post(&relay_url)
        .header("budget-signature", "t=1,v1=00")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    assert_eq!(
        client.request(forged).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    let schema = common::pg::fresh_schema().await;
    let gw = Gateway::start(&[
        "--database-url",
        &url_for(&schema),
        "--alert-webhook",
        &relay_url,
        "--alert-secret",
        SECRET,
    ]);
    let token = gw.register("ws-s", "http://127.0.0.1:9/agent").await;
    patch(
        &gw,
        "ws-s",
        &json!({"budget_limits": {"daily": 10_000}, "alert_thresholds": [50]}),
    )
    .await;
    heartbeat(&gw, &token, "ws-s", 5_250, 1).await;
    slack
        .until(DELIVERY, "the relayed line", |got| !got.is_empty())
        .await;
    until_outbox_empty(&schema).await;
    drop(relay);
    let lines: Vec<Value> = slack.received().iter().map(|r| r.json.clone()).collect();
    assert_eq!(
        lines,
        [json!({"text": "ws-s: daily spend $52.50 reached 50% of $100.00"})]
    );
}
