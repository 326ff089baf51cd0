//! The Postgres store at the edges: stored data it did not write, the seed's removed mark, the
//! database's clock, running totals near `i64::MAX`, a patch whose answer cannot be read, and a
//! call its caller stopped waiting for. Each test here failed on the code before its fix.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tower_budget::period::{LimitsPatch, Period};
use tower_budget::store::postgres::{deadpool_postgres, PgStore};
use tower_budget::store::{BudgetStore, CachingStore, Heartbeat, Registry, StoreError};
use tower_budget::WorkspaceId;

fn ws(id: &str) -> WorkspaceId {
    WorkspaceId::new(id).unwrap()
}

async fn store_and_client() -> (PgStore, deadpool_postgres::Object) {
    let pool = common::pg::migrated_pool().await;
    let client = pool.get().await.unwrap();
    (PgStore::new(pool), client)
}

/// SPEC §3: anything valid `jsonb` can hold reads as "no limit" for the affected period —
/// never an error, never a panic (a number beyond `i64` used to reset the connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_stored_jsonb_reads_tolerantly() {
    let (store, client) = store_and_client().await;
    let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let cases: Vec<(String, [Option<i64>; 4])> = vec![
        (
            r#"{"hourly": 1e400, "daily": 7, "weekly": -3, "monthly": 1.5}"#.into(),
            [None, Some(7), None, None],
        ),
        (
            format!(r#"{{"hourly": {deep}, "daily": "100", "monthly": 9}}"#),
            [None, None, None, Some(9)],
        ),
        (
            format!(r#"{{"x": {deep}, "weekly": 0}}"#),
            [None, None, Some(0), None],
        ),
        (
            r#"{"hourly": 99999999999999999999, "daily": 100.0, "weekly": true}"#.into(),
            [None, None, None, None],
        ),
        (deep.clone(), [None; 4]),
        ("1e400".into(), [None; 4]),
        (r#""hourly""#.into(), [None; 4]),
        ("null".into(), [None; 4]),
    ];
    for (i, (stored, want)) in cases.iter().enumerate() {
        let id = format!("odd-{i}");
        store.register(&ws(&id)).await.unwrap();
        client
            .execute(
                "UPDATE workspaces SET budget_limits = $2::TEXT::JSONB WHERE id = $1",
                &[&id, stored],
            )
            .await
            .unwrap();
        let status = store.status(&ws(&id)).await.unwrap();
        let got: Vec<_> = Period::all().map(|p| status.limits.get(p)).collect();
        assert_eq!(got, want, "stored {}", &stored[..stored.len().min(80)]);
        assert_eq!(store.limits(&ws(&id)).await.unwrap(), status.limits);
    }
    // SQL NULL too.
    store.register(&ws("null-limits")).await.unwrap();
    let status = store.status(&ws("null-limits")).await.unwrap();
    assert!(status.limits.is_empty());
}

/// SPEC §3: a write changes only what it names; keys this version does not know (a period a
/// newer replica added) stay stored as they were. A stored value that is not an object is
/// replaced by the patch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_keeps_keys_it_does_not_know() {
    let (store, client) = store_and_client().await;
    store.register(&ws("w")).await.unwrap();
    client
        .execute(
            r#"UPDATE workspaces SET budget_limits = '{"yearly": 90000, "hourly": 5, "daily": {"odd": 1}}' WHERE id = 'w'"#,
            &[],
        )
        .await
        .unwrap();
    let patch = LimitsPatch::new()
        .with(Period::HOURLY, Some(10))
        .unwrap()
        .with(Period::MONTHLY, Some(2_000))
        .unwrap();
    let after = store.patch_limits(&ws("w"), &patch).await.unwrap();
    assert_eq!(after.limits.get(Period::HOURLY), Some(10));
    assert_eq!(
        after.limits.get(Period::DAILY),
        None,
        "unreadable: no limit"
    );
    let (stored, legacy): (serde_json::Value, Option<i64>) = {
        let row = client
            .query_one(
                "SELECT budget_limits, budget_limit FROM workspaces WHERE id = 'w'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(
        stored,
        serde_json::json!({"yearly": 90000, "hourly": 10, "daily": {"odd": 1}, "monthly": 2000})
    );
    assert_eq!(legacy, Some(2_000), "the legacy column follows monthly");
    let clear = LimitsPatch::new().with(Period::DAILY, None).unwrap();
    store.patch_limits(&ws("w"), &clear).await.unwrap();
    let row = client
        .query_one("SELECT budget_limits FROM workspaces WHERE id = 'w'", &[])
        .await
        .unwrap();
    let stored: serde_json::Value = row.get(0);
    assert_eq!(
        stored,
        serde_json::json!({"yearly": 90000, "hourly": 10, "monthly": 2000})
    );

    client
        .execute(
            "UPDATE workspaces SET budget_limits = '[1, 2]' WHERE id = 'w'",
            &[],
        )
        .await
        .unwrap();
    store.patch_limits(&ws("w"), &clear).await.unwrap();
    let row = client
        .query_one("SELECT budget_limits FROM workspaces WHERE id = 'w'", &[])
        .await
        .unwrap();
    let stored: serde_json::Value = row.get(0);
    assert_eq!(stored, serde_json::json!({}));
}

/// A patch whose answer cannot be read changes nothing (it used to be stored, then answered 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_that_cannot_answer_changes_nothing() {
    let (store, client) = store_and_client().await;
    store.register(&ws("w")).await.unwrap();
    let set = |c| LimitsPatch::new().with(Period::HOURLY, Some(c)).unwrap();
    store.patch_limits(&ws("w"), &set(100)).await.unwrap();
    // The status read needs the ledger; without it the patch's own read fails.
    client
        .batch_execute("ALTER TABLE workspace_spend_events RENAME TO ledger_away")
        .await
        .unwrap();
    let failed = store.patch_limits(&ws("w"), &set(5)).await;
    client
        .batch_execute("ALTER TABLE ledger_away RENAME TO workspace_spend_events")
        .await
        .unwrap();
    assert!(
        matches!(failed, Err(StoreError::Unavailable(_))),
        "{failed:?}"
    );
    let limits = store.limits(&ws("w")).await.unwrap();
    assert_eq!(limits.get(Period::HOURLY), Some(100), "nothing changed");
}

/// A database that predates the crate marks removed workspaces with `status = 'removed'`: 404
/// everywhere and not listed, until registered again, which clears both marks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_removed_mark_is_honoured() {
    let (store, client) = store_and_client().await;
    for id in ["gone", "kept"] {
        store.register(&ws(id)).await.unwrap();
    }
    client
        .execute(
            "UPDATE workspaces SET status = 'removed' WHERE id = 'gone'",
            &[],
        )
        .await
        .unwrap();
    client
        .execute(
            "UPDATE workspaces SET status = 'online' WHERE id = 'kept'",
            &[],
        )
        .await
        .unwrap();
    let gone = ws("gone");
    assert!(matches!(
        store.status(&gone).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.limits(&gone).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.registration(&gone).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .record_heartbeat(&Heartbeat::new(gone.clone(), Some(5), None))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.patch_limits(&gone, &LimitsPatch::new()).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.remove(&gone).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.list_workspaces(None, 10).await.unwrap(), [ws("kept")]);
    assert!(
        store.status(&ws("kept")).await.is_ok(),
        "other states count as live"
    );

    store.register(&gone).await.unwrap();
    assert!(store.status(&gone).await.is_ok());
    let status: Option<String> = client
        .query_one("SELECT status FROM workspaces WHERE id = 'gone'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, None, "registering again clears the mark");
    let kept: Option<String> = client
        .query_one("SELECT status FROM workspaces WHERE id = 'kept'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept.as_deref(), Some("online"));
}

/// Ledger entries are stamped with the database server's clock, not the process's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_is_stamped_by_the_database_clock() {
    let (store, client) = store_and_client().await;
    store.register(&ws("w")).await.unwrap();
    store
        .record_heartbeat(&Heartbeat::new(ws("w"), Some(40), None))
        .await
        .unwrap();
    let row = client
        .query_one(
            "SELECT extract(epoch FROM now() - occurred_at)::FLOAT8 FROM workspace_spend_events",
            &[],
        )
        .await
        .unwrap();
    let age: f64 = row.get(0);
    assert!(
        (0.0..5.0).contains(&age),
        "stamped {age} s before the database's now"
    );
    // An entry a wrong clock once stamped two hours ahead keeps later entries in order, and
    // the database's windows do not count it until its time: spend stays in the ledger.
    client
        .batch_execute(
            "UPDATE workspace_spend_events SET occurred_at = now() + interval '2 hours';
             UPDATE workspaces SET spend_last_at = now() + interval '2 hours'",
        )
        .await
        .unwrap();
    let status = store.status(&ws("w")).await.unwrap();
    assert_eq!(status.spend[Period::HOURLY], 0);
}

/// However many resets an agent reports, no heartbeat is refused for arithmetic reasons; the
/// running totals shift down (or saturate) instead of overflowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_totals_never_overflow() {
    let (store, client) = store_and_client().await;
    let w = ws("w");
    store.register(&w).await.unwrap();
    // As if ~9.2 million maximal resets had been reported more than 35 days ago (since pruned),
    // then one recent report.
    client
        .batch_execute(
            "INSERT INTO workspace_spend_events VALUES
                ('w', now() - interval '1 minute', 500, 9223372036854775500);
             UPDATE workspaces SET spend_total_cents = 9223372036854775500,
                 spend_last_at = now() - interval '1 minute', monthly_spend = 500 WHERE id = 'w'",
        )
        .await
        .unwrap();
    let max = tower_budget::store::MAX_REPORTED_CENTS;
    let mut expected_hourly = 500;
    for reported in [max, 1_000, max] {
        let out = store
            .record_heartbeat(&Heartbeat::new(w.clone(), Some(reported), None))
            .await
            .expect("never refused for arithmetic");
        expected_hourly += out.recorded_delta_cents;
    }
    assert_eq!(expected_hourly, 2 * max, "every delta recorded in full");
    let status = store.status(&w).await.unwrap();
    assert_eq!(
        status.spend[Period::HOURLY],
        expected_hourly,
        "exact after the shift"
    );

    // Everything still inside the windows: nothing to shift away, so spend saturates.
    let w2 = ws("w2");
    store.register(&w2).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO workspace_spend_events VALUES
                ('w2', now() - interval '1 minute', 9223372036854775000, 9223372036854775000);
             UPDATE workspaces SET spend_total_cents = 9223372036854775000,
                 spend_last_at = now() - interval '1 minute', monthly_spend = 0 WHERE id = 'w2'",
        )
        .await
        .unwrap();
    let out = store
        .record_heartbeat(&Heartbeat::new(w2.clone(), Some(max), None))
        .await
        .unwrap();
    assert_eq!(out.recorded_delta_cents, 807);
    assert_eq!(
        store.status(&w2).await.unwrap().spend[Period::HOURLY],
        i64::MAX
    );
}

/// A call its caller stopped waiting for (a budget check past its timeout) runs to completion
/// on its own: its connection goes back to the pool idle. Before, a timed-out check left the
/// cache's shared load unpolled, holding its pooled connection until someone asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_given_up_on_releases_its_connection() {
    let pool = common::pg::migrated_pool().await;
    let store = Arc::new(PgStore::new(pool.clone()));
    let cache = CachingStore::new(store.clone(), Duration::from_secs(30), 100);
    let names: Vec<WorkspaceId> = (0..4).map(|i| ws(&format!("w{i}"))).collect();
    for w in &names {
        store.register(w).await.unwrap();
    }
    // A table lock makes every status read wait.
    let mut locker = pool.get().await.unwrap();
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE workspaces IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    for w in &names {
        let gave_up = tokio::time::timeout(Duration::from_millis(100), cache.status(w)).await;
        assert!(gave_up.is_err(), "the check waits on the lock");
    }
    tx.commit().await.unwrap();
    drop(locker);
    // Nobody asks again, yet every abandoned read finishes and its connection comes back idle.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = pool.status();
        if status.available == status.size && status.size >= 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "pool {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And the next check gets the answer the abandoned read fetched.
    for w in &names {
        let answer = tokio::time::timeout(Duration::from_secs(1), cache.status(w)).await;
        assert!(matches!(answer, Ok(Ok(_))), "{w}");
    }
}

/// Heartbeats written in groups keep each workspace's order: two reports of one workspace sent
/// together (100, then 150, no `seq`) count 150 — applied the other way round they would read
/// as a reset and count 250.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_heartbeats_keep_each_workspaces_order() {
    let (store, _client) = store_and_client().await;
    let ids: Vec<WorkspaceId> = (0..40).map(|i| ws(&format!("grp-{i}"))).collect();
    for w in &ids {
        store.register(w).await.unwrap();
    }
    // Everything queued at once: the reports share groups.
    let reports = ids.iter().flat_map(|w| {
        [100, 150].map(|cents| {
            let store = store.clone();
            let w = w.clone();
            async move {
                store
                    .record_heartbeat(&Heartbeat::new(w, Some(cents), None))
                    .await
            }
        })
    });
    for outcome in futures_util::future::join_all(reports).await {
        outcome.unwrap();
    }
    for w in &ids {
        assert_eq!(
            store.status(w).await.unwrap().spend[Period::MONTHLY],
            150,
            "{w}"
        );
    }
}

/// A row held by another transaction fails its heartbeat's group after the lock timeout (2 s),
/// not after the statement timeout; the next group is written as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_row_fails_its_group_within_the_lock_timeout() {
    let (store, mut client) = store_and_client().await;
    let (locked, free) = (ws("locked-row"), ws("free-row"));
    store.register(&locked).await.unwrap();
    store.register(&free).await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM workspaces WHERE id = $1 FOR UPDATE",
        &[&locked.to_string()],
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let outcome = store
        .record_heartbeat(&Heartbeat::new(locked.clone(), Some(10), None))
        .await;
    let waited = started.elapsed();
    assert!(
        matches!(outcome, Err(StoreError::Unavailable(_))),
        "{outcome:?}"
    );
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(8),
        "waited {waited:?}"
    );
    tx.rollback().await.unwrap();
    let ok = store
        .record_heartbeat(&Heartbeat::new(free.clone(), Some(10), None))
        .await
        .unwrap();
    assert_eq!(ok.recorded_delta_cents, 10);
    let retried = store
        .record_heartbeat(&Heartbeat::new(locked.clone(), Some(10), None))
        .await
        .unwrap();
    assert_eq!(
        retried.recorded_delta_cents, 10,
        "nothing of the failed group landed"
    );
}

/// The heartbeat futures of [`two_queued_reports`].
type Pending = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<tower_budget::store::HeartbeatOutcome, StoreError>>,
    >,
>;

/// A store on a one-connection pool whose connection `held` keeps, and two reports of the
/// workspace `name` queued behind it ([`queue_two`]).
async fn two_queued_reports(
    name: &str,
) -> (
    PgStore,
    deadpool_postgres::Pool,
    WorkspaceId,
    deadpool_postgres::Object,
    Pending,
    Pending,
) {
    let schema = common::pg::fresh_schema().await;
    let pool = common::pg::pool_in(&schema, 1).await;
    tower_budget::store::postgres::migrate(&pool).await.unwrap();
    let store = PgStore::new(pool.clone());
    let w = ws(name);
    store.register(&w).await.unwrap();
    let held = pool.get().await.unwrap();
    let (first, second) = queue_two(&store, &w);
    (store, pool, w, held, first, second)
}

/// Reports of cumulative 100, then 150, for `w`, queued in this order (each polled once).
fn queue_two(store: &PgStore, w: &WorkspaceId) -> (Pending, Pending) {
    let report = |cents: i64| -> Pending {
        let (store, w) = (store.clone(), w.clone());
        Box::pin(async move {
            store
                .record_heartbeat(&Heartbeat::new(w, Some(cents), None))
                .await
        })
    };
    let (mut first, mut second) = (report(100), report(150));
    let waker = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(first.as_mut().poll(&mut cx).is_pending(), "queued");
    assert!(second.as_mut().poll(&mut cx).is_pending(), "queued");
    (first, second)
}

/// After the 150 was given up and the 100 written, a report of 100 shows what was written:
/// nothing more.
async fn only_the_first_was_written(store: &PgStore, w: &WorkspaceId, first: Pending) {
    assert_eq!(first.await.unwrap().recorded_delta_cents, 100);
    let third = store
        .record_heartbeat(&Heartbeat::new(w.clone(), Some(100), None))
        .await
        .unwrap();
    assert_eq!(
        third.recorded_delta_cents, 0,
        "the given-up 150 was never written"
    );
    assert_eq!(store.status(w).await.unwrap().spend[Period::MONTHLY], 100);
}

/// A heartbeat whose caller stopped waiting before its group was written is not written: the
/// caller was answered with an error, and "not written" must then hold (the agent's next
/// cumulative report carries the spend).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_given_up_before_its_group_is_not_written() {
    let (store, _pool, w, held, first, second) = two_queued_reports("given-up").await;
    drop(second);
    drop(held);
    only_the_first_was_written(&store, &w, first).await;
}

/// The same, given up after its group was formed and while the group waited for a connection:
/// it is left out once the group has its connection (checked just before the statements go).
/// On one thread, so that both reports are queued before the group's writer first runs.
#[tokio::test(flavor = "current_thread")]
async fn a_heartbeat_given_up_while_its_group_waits_is_not_written() {
    let (store, pool, w, held, first, second) = two_queued_reports("given-up-late").await;
    // The writer runs only now: it takes both into one group, which waits for the connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pool.status().waiting == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the group never waited for the connection"
        );
        tokio::task::yield_now().await;
    }
    drop(second);
    drop(held);
    only_the_first_was_written(&store, &w, first).await;
}

/// The same, given up while its group's statements wait for a row lock another transaction
/// holds: the group is rolled back and written again without it before it commits.
#[tokio::test(flavor = "current_thread")]
async fn a_heartbeat_given_up_while_its_group_waits_for_a_lock_is_not_written() {
    let schema = common::pg::fresh_schema().await;
    let pool = common::pg::pool_in(&schema, 2).await;
    tower_budget::store::postgres::migrate(&pool).await.unwrap();
    let store = PgStore::new(pool.clone());
    let w = ws("given-up-locked");
    store.register(&w).await.unwrap();
    let mut locker = pool.get().await.unwrap();
    let tx = locker.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM workspaces WHERE id = $1 FOR UPDATE",
        &[&w.to_string()],
    )
    .await
    .unwrap();
    let (first, second) = queue_two(&store, &w);
    // Until the group's statement waits for the lock this transaction holds (2 s at most
    // before it would fail the group).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        // Activity is read as of the transaction's first look unless the snapshot is cleared.
        tx.execute("SELECT pg_stat_clear_snapshot()", &[])
            .await
            .unwrap();
        let blocked: i64 = tx
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if blocked > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the group never waited for the lock"
        );
    }
    // Within the group's 2 s lock timeout (past it the group fails, and `first` with it).
    drop(second);
    tx.rollback().await.unwrap();
    only_the_first_was_written(&store, &w, first).await;
}

/// Alert state written by other software: thresholds with NULLs or two dimensions read
/// tolerantly (the GET used to panic), and outbox rows this version cannot read are dropped,
/// not retried for ever and not a panic in the sender (SPEC §12, RELIABILITY §9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_alert_rows_read_tolerantly() {
    use tower_budget::store::AlertOutbox;
    let (store, client) = store_and_client().await;
    for (id, stored, want) in [
        ("t-null", "'{80,NULL,50}'", vec![50u16, 80]),
        ("t-2d", "'{{50},{80}}'", vec![50, 80]),
        ("t-range", "'{0,-5,2000,100}'", vec![100]),
        ("t-empty", "'{}'", vec![]),
    ] {
        store.register(&ws(id)).await.unwrap();
        client
            .execute(
                &format!("UPDATE workspaces SET alert_thresholds = {stored} WHERE id = '{id}'"),
                &[],
            )
            .await
            .unwrap();
        let report = store.report(&ws(id)).await.unwrap();
        assert_eq!(report.alert_thresholds.as_slice(), want, "{id}");
    }
    // The heartbeat's step reads them the same way: 50 and 80 fire once each.
    store
        .patch_limits(
            &ws("t-null"),
            &LimitsPatch::new().with(Period::DAILY, Some(100)).unwrap(),
        )
        .await
        .unwrap();
    store
        .record_heartbeat(&Heartbeat::new(ws("t-null"), Some(90), None))
        .await
        .unwrap();
    let good = store
        .claim_alerts(10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(good.len(), 1, "one head per workspace");
    assert_eq!(good[0].event.threshold, 50);
    store.alert_delivered(&good[0]).await.unwrap();

    // Odd outbox rows: an unknown kind, a time that does not read, a delivered_to with a NULL,
    // attempts at the top of the range.
    for (ws_id, kind, decided, delivered, attempts) in [
        ("o-kind", "budget.unknown", "now()", "'{}'", 0),
        ("o-time", "budget.recovered", "'infinity'", "'{}'", 0),
        (
            "o-null",
            "budget.recovered",
            "now()",
            "'{NULL,\"http://a\"}'",
            0,
        ),
        ("o-max", "budget.recovered", "now()", "'{}'", i32::MAX),
    ] {
        client
            .execute(
                &format!(
                    "INSERT INTO budget_alert_outbox (workspace_id, id, kind, period, threshold,
                        limit_cents, spend_cents, decided_at, created_at, next_attempt_at,
                        delivered_to, attempts)
                     VALUES ('{ws_id}', 'x-{ws_id}', '{kind}', 'hourly', 100, 5, 1, {decided},
                        now(), now() - interval '1 second', {delivered}, {attempts})"
                ),
                &[],
            )
            .await
            .unwrap();
    }
    let mut claimed = store
        .claim_alerts(10, Duration::from_secs(60))
        .await
        .unwrap();
    claimed.sort_by(|a, b| a.event.workspace.cmp(&b.event.workspace));
    let got: Vec<_> = claimed
        .iter()
        .map(|c| {
            (
                c.event.workspace.to_string(),
                c.delivered_to.clone(),
                c.attempts,
            )
        })
        .collect();
    assert!(
        got.contains(&("o-null".into(), vec!["http://a".to_string()], 1)),
        "{got:?}"
    );
    assert!(
        got.contains(&("o-max".into(), vec![], i32::MAX as u32)),
        "{got:?}"
    );
    let left = |ws_id: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT count(*) FROM budget_alert_outbox WHERE workspace_id = $1",
                    &[&ws_id],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(left("o-time").await, 0, "an unreadable row is dropped");
    assert_eq!(
        left("o-kind").await,
        1,
        "a kind a newer version writes is left to it, not dropped"
    );
    assert!(!got.iter().any(|(w, _, _)| w == "o-kind"));
}

/// A heartbeat whose transaction began after a PATCH's but took the row lock first stamped its
/// entry after the PATCH transaction's `now()`: the PATCH must count it (an injected clock
/// behind the last entry stands for that PATCH's start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_decides_alerts_with_the_spend_recorded_before_it_took_the_lock() {
    use tower_budget::alerts::AlertKind;
    use tower_budget::store::AlertOutbox;
    // Whole microseconds, as the database keeps them.
    let start = chrono::DateTime::from_timestamp_micros(
        (chrono::Utc::now() - chrono::Duration::minutes(10)).timestamp_micros(),
    )
    .unwrap();
    let clock = tower_budget::clock::ManualClock::new(start);
    let pool = common::pg::migrated_pool().await;
    let store = PgStore::new(pool).with_clock(clock.clone());
    let w = ws("race");
    store.register(&w).await.unwrap();
    store
        .patch_limits(
            &w,
            &LimitsPatch::new()
                .with(Period::HOURLY, Some(1_000))
                .unwrap(),
        )
        .await
        .unwrap();
    store
        .record_heartbeat(&Heartbeat::new(w.clone(), Some(700), None))
        .await
        .unwrap();
    clock.set(start + chrono::Duration::seconds(5));
    store
        .record_heartbeat(&Heartbeat::new(w.clone(), Some(900), None))
        .await
        .unwrap();
    clock.set(start + chrono::Duration::seconds(2));
    let report = store
        .patch_limits(
            &w,
            &LimitsPatch::new().with(Period::HOURLY, Some(850)).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(report.spend[Period::HOURLY], 900, "the later entry counts");
    clock.set(start + chrono::Duration::seconds(10));
    let mut events = Vec::new();
    loop {
        let claimed = store
            .claim_alerts(10, Duration::from_secs(60))
            .await
            .unwrap();
        if claimed.is_empty() {
            break;
        }
        for c in claimed {
            store.alert_delivered(&c).await.unwrap();
            events.push((
                c.event.kind,
                c.event.threshold,
                c.event.limit,
                c.event.spend,
            ));
        }
    }
    assert_eq!(
        events,
        [
            (AlertKind::ThresholdCrossed, 80, Some(1_000), 900),
            (AlertKind::ThresholdCrossed, 100, Some(850), 900),
        ],
        "80 once (the heartbeat's), then 100 at the lowered limit"
    );
    // The other way round: that decision was made at start + 5 s (the last entry's time), so a
    // heartbeat whose own clock says start + 3 s is stamped no earlier than it.
    clock.set(start + chrono::Duration::seconds(3));
    store
        .record_heartbeat(&Heartbeat::new(w.clone(), Some(950), None))
        .await
        .unwrap();
    let client = store.pool().get().await.unwrap();
    let last: chrono::DateTime<chrono::Utc> = client
        .query_one(
            "SELECT max(occurred_at) FROM workspace_spend_events WHERE workspace_id = 'race'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(last, start + chrono::Duration::seconds(5));
}

/// The heartbeat skips the alert decision while the running total is below a stored bound; a
/// limit written straight into the table by other software resets that bound, so the next
/// heartbeat still decides its crossings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_written_by_other_software_still_fire_alerts() {
    use tower_budget::store::AlertOutbox;
    let (store, client) = store_and_client().await;
    let w = ws("direct");
    store.register(&w).await.unwrap();
    store
        .patch_limits(
            &w,
            &LimitsPatch::new()
                .with(Period::DAILY, Some(1_000_000))
                .unwrap(),
        )
        .await
        .unwrap();
    store
        .record_heartbeat(&Heartbeat::new(w.clone(), Some(100), None))
        .await
        .unwrap();
    let bound: Option<i64> = client
        .query_one(
            "SELECT alert_below FROM workspaces WHERE id = 'direct'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        bound,
        Some(800_000),
        "80 % of the limit above an empty window"
    );
    client
        .execute(
            r#"UPDATE workspaces SET budget_limits = '{"daily": 200}' WHERE id = 'direct'"#,
            &[],
        )
        .await
        .unwrap();
    store
        .record_heartbeat(&Heartbeat::new(w.clone(), Some(170), None))
        .await
        .unwrap();
    let claimed = store
        .claim_alerts(10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "the 80 % crossing (170 of 200)");
    assert_eq!(claimed[0].event.threshold, 80);
    assert_eq!(claimed[0].event.spend, 170);
}
