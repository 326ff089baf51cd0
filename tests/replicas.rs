//! Replicas that agree at once: three gateway processes on one PostgreSQL, each with the default
//! 30 s decision cache. A write through one changes what the others answer within seconds —
//! far inside the TTL, so only the change notifications can have done it — for every kind of
//! write; and after the listen connection is terminated, and after the database restarts.
//!
//! Workspace ids are unique per test: notification channels are database-wide, and another
//! test's write to a workspace of the same name would also drop these entries.

mod common;

use std::time::{Duration, Instant};

use common::agent::Agent;
use common::gateway::{Gateway, Reply, ADMIN};
use http::{Method, StatusCode};
use serde_json::{json, Value};

/// Far below the 30 s TTL: an answer that changes within it was changed by a notification.
const PROPAGATION_DEADLINE: Duration = Duration::from_secs(5);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), fastrand::u32(..))
}

fn url_for(base: &str, schema: &str) -> String {
    format!("{base}?options=-csearch_path%3D{schema}")
}

async fn rpc(gw: &Gateway, id: &str) -> StatusCode {
    gw.rpc(id).await.status
}

async fn patch(gw: &Gateway, id: &str, limits: Value) {
    gw.patch_limits(id, limits).await
}

async fn budget_get(gw: &Gateway, id: &str, token: &str) -> Reply {
    gw.budget(id, token).await
}

/// Polls `probe` until it returns `want` on every gateway, within the deadline.
async fn until_all(
    gateways: &[&Gateway],
    what: &str,
    want: StatusCode,
    probe: impl AsyncFn(&Gateway) -> StatusCode,
) {
    let deadline = Instant::now() + PROPAGATION_DEADLINE;
    for gw in gateways {
        loop {
            let got = probe(gw).await;
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: gateway {} still answers {got}, want {want}, {PROPAGATION_DEADLINE:?} after the write (TTL 30 s)",
                gw.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn listener_connected(gw: &Gateway) -> bool {
    gw.listener_connected().await
}

async fn until_listening(gateways: &[&Gateway], _what: &str) {
    common::gateway::until_listening(gateways).await
}

/// A metric's value in a gateway's `/metrics` (0 when absent).
async fn metric(gw: &Gateway, name: &str) -> f64 {
    let r = gw.call(Method::GET, "/metrics", None, None).await;
    String::from_utf8_lossy(&r.bytes)
        .lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Two gateways on a PostgreSQL of the test's own (it gets terminated, restarted or flooded),
/// both listening, with a workspace registered through the first and cached by the second.
async fn two_on_their_own_server(
    prefix: &str,
) -> (common::pg::Server, Agent, Gateway, Gateway, String) {
    let server = common::pg::Server::start();
    let url = server.url();
    let agent = Agent::start().await;
    let a = Gateway::start(&["--database-url", &url]);
    let b = Gateway::start(&["--database-url", &url]);
    until_listening(&[&a, &b], "at start").await;
    let id = unique(prefix);
    a.register(&id, &agent.url()).await;
    until_all(&[&b], "registration", StatusCode::OK, async |gw| {
        rpc(gw, &id).await
    })
    .await;
    (server, agent, a, b, id)
}

const LISTENERS: &str =
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tower-budget-listen'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_write_through_one_process_reaches_the_others_at_once() {
    let first = Agent::start().await;
    let second = Agent::start().await;
    let schema = common::pg::fresh_schema().await;
    let url = url_for(&common::pg::database_url(), &schema);
    let gateways: Vec<Gateway> = (0..3)
        .map(|_| Gateway::start(&["--database-url", &url]))
        .collect();
    let (a, others) = (&gateways[0], [&gateways[1], &gateways[2]]);
    until_listening(&[a, others[0], others[1]], "at start").await;
    for gw in &gateways {
        assert_eq!(metric(gw, "tower_budget_listener_connected").await, 1.0);
    }
    let id = unique("rep");
    let token = a.register(&id, &first.url()).await;
    // Every cache warm: the decision and the registration, and the token on the others.
    until_all(&others, "registration", StatusCode::OK, async |gw| {
        rpc(gw, &id).await
    })
    .await;
    for gw in others {
        assert_eq!(budget_get(gw, &id, &token).await.status, StatusCode::OK);
    }

    // A limits PATCH, both ways.
    patch(a, &id, json!({"hourly": 0})).await;
    until_all(
        &others,
        "PATCH to 0",
        StatusCode::PAYMENT_REQUIRED,
        async |gw| rpc(gw, &id).await,
    )
    .await;
    patch(a, &id, json!({"hourly": null})).await;
    until_all(&others, "PATCH cleared", StatusCode::OK, async |gw| {
        rpc(gw, &id).await
    })
    .await;

    // Recorded spend: a heartbeat pushes the workspace over its limit.
    patch(a, &id, json!({"hourly": 100})).await;
    until_all(&others, "under the limit", StatusCode::OK, async |gw| {
        rpc(gw, &id).await
    })
    .await;
    let r = a
        .call(
            Method::POST,
            "/registry/heartbeat",
            Some(&token),
            Some(&json!({"workspace_id": id, "monthly_spend": 150})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    until_all(
        &others,
        "heartbeat",
        StatusCode::PAYMENT_REQUIRED,
        async |gw| rpc(gw, &id).await,
    )
    .await;
    patch(a, &id, json!({"hourly": null})).await;
    until_all(&others, "limit lifted", StatusCode::OK, async |gw| {
        rpc(gw, &id).await
    })
    .await;

    // Registration again: a new agent URL and a rotated token. The first agent is gone, so a
    // stale URL would answer 502; a stale token would still authenticate.
    first.stop();
    let rotated = a.register(&id, &second.url()).await;
    until_all(&others, "old token", StatusCode::FORBIDDEN, async |gw| {
        budget_get(gw, &id, &token).await.status
    })
    .await;
    until_all(&others, "new agent URL", StatusCode::OK, async |gw| {
        rpc(gw, &id).await
    })
    .await;
    for gw in others {
        assert_eq!(budget_get(gw, &id, &rotated).await.status, StatusCode::OK);
    }

    // DELETE.
    assert_eq!(a.delete_workspace(&id).await.status, StatusCode::OK);
    until_all(&others, "DELETE", StatusCode::NOT_FOUND, async |gw| {
        rpc(gw, &id).await
    })
    .await;
    for gw in others {
        assert!(metric(gw, "tower_budget_notifications_total").await >= 1.0);
    }
}

/// The listen connections terminated by the database: each process notices, says so, falls
/// back to the short TTL, reconnects within seconds, and writes reach it at once again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_comes_back_after_its_connection_is_terminated() {
    let (server, _agent, a, b, id) = two_on_their_own_server("term").await;
    let url = server.url();
    assert_eq!(common::pg::admin_query_i64_on(&url, LISTENERS).await, 2);

    let terminated = common::pg::admin_query_i64_on(
        &url,
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE application_name = 'tower-budget-listen') t",
    )
    .await;
    assert_eq!(terminated, 2);
    // Back within seconds, as new sessions.
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::pg::admin_query_i64_on(&url, LISTENERS).await != 2 {
        assert!(Instant::now() < deadline, "the listeners did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until_listening(&[&a, &b], "after pg_terminate_backend").await;
    patch(&a, &id, json!({"daily": 0})).await;
    until_all(
        &[&b],
        "PATCH after the reconnect",
        StatusCode::PAYMENT_REQUIRED,
        async |gw| rpc(gw, &id).await,
    )
    .await;
}

/// The database restarts: the listeners report the outage, come back when it does, and writes
/// reach every process at once again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_survives_a_database_restart() {
    let (server, _agent, a, b, id) = two_on_their_own_server("restart").await;

    server.stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    while listener_connected(&b).await {
        assert!(Instant::now() < deadline, "the outage went unnoticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&b, "tower_budget_listener_connected").await, 0.0);
    server.start_again();
    until_listening(&[&a, &b], "after the restart").await;
    // The pool's connections died with the server: a write may need a retry or two.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = a
            .call(
                Method::PATCH,
                &format!("/workspaces/{id}/budget"),
                Some(ADMIN),
                Some(&json!({"budget_limits": {"weekly": 0}})),
            )
            .await;
        if r.status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no write after the restart: {:?}",
            r.json
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until_all(
        &[&b],
        "PATCH after the restart",
        StatusCode::PAYMENT_REQUIRED,
        async |gw| rpc(gw, &id).await,
    )
    .await;
}

/// Thousands of notifications a second (heartbeats of other workspaces, written straight to the
/// database) while a process serves calls: every call is answered, the listener keeps up, and a
/// write afterwards still reaches that process at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_storm_does_not_stop_requests() {
    use std::sync::Arc;
    use tower_budget::store::postgres::{PgStore, PoolOptions};
    use tower_budget::store::{BudgetStore, Heartbeat};
    use tower_budget::WorkspaceId;

    let (server, _agent, a, b, id) = two_on_their_own_server("calm").await;
    let url = server.url();

    let store = Arc::new(PgStore::new(PoolOptions::default().build(&url).unwrap()));
    let noisy: Vec<WorkspaceId> = (0..64)
        .map(|i| WorkspaceId::new(&format!("noisy-{i}")).unwrap())
        .collect();
    for w in &noisy {
        store.register(w).await.unwrap();
    }
    let before = metric(&b, "tower_budget_notifications_total").await;
    let storm_until = Instant::now() + Duration::from_secs(3);
    let writers: Vec<_> = noisy
        .chunks(8)
        .map(|chunk| {
            let (store, chunk) = (store.clone(), chunk.to_vec());
            tokio::spawn(async move {
                let mut sent = 0u64;
                let mut spend = 0i64;
                while Instant::now() < storm_until {
                    spend += 1;
                    for w in &chunk {
                        store
                            .record_heartbeat(&Heartbeat::new(w.clone(), Some(spend), None))
                            .await
                            .unwrap();
                        sent += 1;
                    }
                }
                sent
            })
        })
        .collect();
    let mut calls = 0;
    while Instant::now() < storm_until {
        assert_eq!(
            rpc(&b, &id).await,
            StatusCode::OK,
            "a call during the storm"
        );
        calls += 1;
    }
    let mut sent = 0;
    for w in writers {
        sent += w.await.unwrap();
    }
    assert!(
        calls > 0 && sent > 1_000,
        "calls {calls}, heartbeats {sent}"
    );
    // Every notification arrives (each heartbeat is its own transaction).
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&b, "tower_budget_notifications_total").await < before + sent as f64 {
        assert!(Instant::now() < deadline, "the listener fell behind");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(listener_connected(&b).await);
    patch(&a, &id, json!({"monthly": 0})).await;
    until_all(
        &[&b],
        "PATCH after the storm",
        StatusCode::PAYMENT_REQUIRED,
        async |gw| rpc(gw, &id).await,
    )
    .await;
}

/// What the V4 trigger sends, read on a plain `LISTEN` connection: one notification per
/// committed change, of the right kind; nothing for a write that changes nothing a decision or
/// an authorization reads, nor for a rolled-back one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_notifies_each_committed_change_once() {
    use futures_util::StreamExt;
    use tower_budget::period::{LimitsPatch, Period};
    use tower_budget::store::postgres::PgStore;
    use tower_budget::store::{BudgetStore, Heartbeat, Registration, Registry};
    use tower_budget::WorkspaceId;

    let schema = common::pg::fresh_schema().await;
    let pool = common::pg::pool_in(&schema, 2).await;
    tower_budget::store::postgres::migrate(&pool).await.unwrap();
    let store = PgStore::new(pool.clone());
    let id = unique("notify");
    let ws = WorkspaceId::new(&id).unwrap();

    let (client, mut connection) =
        tokio_postgres::connect(&common::pg::database_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    client.batch_execute("LISTEN tower_budget").await.unwrap();
    // Only this test's workspace: other tests write to the same database.
    let mut next = async || loop {
        let payload = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a notification within 10 s")
            .unwrap();
        if payload.ends_with(&format!(":{id}")) || payload == "all:" {
            return payload;
        }
    };

    store.register(&ws).await.unwrap();
    assert_eq!(next().await, format!("agent:{id}"));
    let patch = LimitsPatch::new().with(Period::HOURLY, Some(100)).unwrap();
    store.patch_limits(&ws, &patch).await.unwrap();
    assert_eq!(
        next().await,
        format!("budget:{id}"),
        "one for the whole PATCH"
    );
    store
        .record_heartbeat(&Heartbeat::new(ws.clone(), Some(40), None))
        .await
        .unwrap();
    assert_eq!(next().await, format!("budget:{id}"), "spend recorded");
    // The same report again records nothing, and a rolled-back write is never announced.
    store
        .record_heartbeat(&Heartbeat::new(ws.clone(), Some(40), None))
        .await
        .unwrap();
    let mut c = pool.get().await.unwrap();
    let tx = c.transaction().await.unwrap();
    tx.execute(
        "UPDATE workspaces SET budget_limits = '{\"daily\": 1}' WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    let registration = Registration {
        agent_url: Some("http://127.0.0.1:1/a".into()),
        token_hash: None,
    };
    store.register_agent(&ws, &registration).await.unwrap();
    assert_eq!(
        next().await,
        format!("agent:{id}"),
        "the next one is the registration: nothing came in between"
    );
    store.remove(&ws).await.unwrap();
    assert_eq!(next().await, format!("agent:{id}"));
    // A TRUNCATE names no workspace: everything goes.
    common::pg::admin_execute(&format!("TRUNCATE {schema}.workspaces")).await;
    assert_eq!(next().await, "all:");
}

/// A database without the V4 trigger would never notify: the listener does not claim the long
/// TTL there (it keeps retrying), while one on a migrated schema connects at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_long_ttl_without_the_trigger() {
    use std::sync::Arc;
    use tower_budget::store::postgres::{ChangeListener, ListenOptions, PgStore, PoolOptions};
    use tower_budget::store::CachingStore;

    let base = common::pg::database_url();
    let mut listeners = Vec::new();
    let mut schemas = Vec::new();
    for drop_trigger in [false, true] {
        let schema = common::pg::fresh_schema().await;
        schemas.push(schema.clone());
        let options = PoolOptions::default().with_schema(&schema);
        let pool = options.build(&base).unwrap();
        tower_budget::store::postgres::migrate(&pool).await.unwrap();
        if drop_trigger {
            common::pg::admin_execute(&format!(
                "DROP TRIGGER tower_budget_notify_change ON {schema}.workspaces"
            ))
            .await;
        }
        let cache = Arc::new(CachingStore::with_defaults(Arc::new(PgStore::new(pool))));
        let listener = ChangeListener::spawn(
            options.connect_config(&base).unwrap(),
            &cache,
            ListenOptions::default(),
        );
        listeners.push((cache, listener));
    }
    let (healthy, broken) = (&listeners[0], &listeners[1]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !healthy.1.is_connected() {
        assert!(
            Instant::now() < deadline,
            "the healthy listener did not connect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(healthy.0.ttl(), Duration::from_secs(30));
    assert_eq!(healthy.0.registration_ttl(), Duration::from_secs(300));
    // Give the broken one as long again and a few retries (backoff starts at 100 ms).
    let connected_at = Instant::now();
    while connected_at.elapsed() < Duration::from_secs(2) {
        assert!(!broken.1.is_connected(), "connected without the trigger");
        assert_eq!(broken.0.ttl(), Duration::from_secs(1));
        assert_eq!(broken.0.registration_ttl(), Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A trigger disabled while connected is noticed by the next probe (every 2 s).
    common::pg::admin_execute(&format!(
        "ALTER TABLE {}.workspaces DISABLE TRIGGER tower_budget_notify_change",
        schemas[0]
    ))
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while healthy.1.is_connected()
        || healthy.0.ttl() != Duration::from_secs(1)
        || healthy.0.registration_ttl() != Duration::from_secs(1)
    {
        assert!(
            Instant::now() < deadline,
            "a disabled trigger went unnoticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
