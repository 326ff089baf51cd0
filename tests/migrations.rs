//! Migrations on a real PostgreSQL: an empty database, the seed's schema with rows, reruns,
//! concurrent starts, and an edited migration.

mod common;

use common::pg::{admin_execute, fresh_schema, pool_in};
use tower_budget::period::{LimitsPatch, Period};
use tower_budget::store::postgres::{migrate, MigrateError, PgStore};
use tower_budget::store::{BudgetStore, Heartbeat};
use tower_budget::WorkspaceId;

fn ws(id: &str) -> WorkspaceId {
    WorkspaceId::new(id).unwrap()
}

#[tokio::test]
async fn applies_to_an_empty_database_and_reruns_as_a_no_op() {
    let schema = fresh_schema().await;
    let pool = pool_in(&schema, 4).await;
    migrate(&pool).await.unwrap();
    migrate(&pool).await.unwrap();
    let client = pool.get().await.unwrap();
    let applied: i64 = client
        .query_one("SELECT count(*) FROM tower_budget_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, 5);
    let store = PgStore::new(pool.clone());
    store.register(&ws("a")).await.unwrap();
    let out = store
        .record_heartbeat(&Heartbeat::new(ws("a"), Some(10), None))
        .await
        .unwrap();
    assert_eq!(out.recorded_delta_cents, 10);
    // A replica still on the previous release calls the four-argument heartbeat during a
    // rolling upgrade: it still records (without deciding alerts).
    let row = client
        .query_one(
            "SELECT o_known, o_delta_cents FROM tower_budget_record_heartbeat('a', 25, NULL, NULL)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, bool>(0), row.get::<_, i64>(1)), (true, 15));
}

#[tokio::test]
async fn applies_to_a_seed_database_with_rows_and_backfills_the_monthly_limit() {
    let schema = fresh_schema().await;
    admin_execute(&format!(
        "CREATE TABLE {schema}.workspaces (id TEXT PRIMARY KEY, status TEXT, budget_limit BIGINT, monthly_spend BIGINT);
         INSERT INTO {schema}.workspaces VALUES
           ('limited', 'online', 2000, 150),
           ('unlimited', 'online', NULL, 0),
           ('negative', 'offline', -5, NULL),
           ('zero', 'online', 0, 99);"
    ))
    .await;
    let pool = pool_in(&schema, 4).await;
    migrate(&pool).await.unwrap();
    let store = PgStore::new(pool.clone());

    let limits = |id: &'static str| {
        let store = store.clone();
        async move { store.limits(&ws(id)).await.unwrap() }
    };
    assert_eq!(
        limits("limited").await.to_json(),
        serde_json::json!({"monthly": 2000})
    );
    assert!(limits("unlimited").await.is_empty());
    assert!(limits("negative").await.is_empty());
    assert_eq!(
        limits("zero").await.get(Period::MONTHLY),
        Some(0),
        "0 = block all survives"
    );
    let status_col: String = pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT status FROM workspaces WHERE id = 'negative'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status_col, "offline", "seed columns are kept");

    // The seed's monthly_spend is the agent's last cumulative report: the next heartbeat only
    // counts what is new since then.
    let out = store
        .record_heartbeat(&Heartbeat::new(ws("limited"), Some(200), None))
        .await
        .unwrap();
    assert_eq!(out.recorded_delta_cents, 50);

    // Every write keeps the legacy column equal to the monthly limit.
    let legacy = |pool: tower_budget::store::postgres::deadpool_postgres::Pool| async move {
        pool.get()
            .await
            .unwrap()
            .query_one(
                "SELECT budget_limit FROM workspaces WHERE id = 'limited'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, Option<i64>>(0)
    };
    store
        .patch_limits(
            &ws("limited"),
            &LimitsPatch::new()
                .with(Period::MONTHLY, Some(3000))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(legacy(pool.clone()).await, Some(3000));
    store
        .patch_limits(
            &ws("limited"),
            &LimitsPatch::new().with(Period::HOURLY, Some(10)).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        legacy(pool.clone()).await,
        Some(3000),
        "other periods leave it alone"
    );
    store
        .patch_limits(&ws("limited"), &LimitsPatch::legacy_monthly(None).unwrap())
        .await
        .unwrap();
    assert_eq!(legacy(pool.clone()).await, None);
}

#[tokio::test]
async fn backfill_keeps_a_monthly_limit_already_set() {
    let schema = fresh_schema().await;
    admin_execute(&format!(
        "CREATE TABLE {schema}.workspaces (id TEXT PRIMARY KEY, status TEXT, budget_limit BIGINT, monthly_spend BIGINT,
                                           budget_limits JSONB);
         INSERT INTO {schema}.workspaces VALUES
           ('set', 'online', 2000, 0, '{{\"monthly\": 500, \"hourly\": 5}}'),
           ('null-monthly', 'online', 2000, 0, '{{\"monthly\": null, \"hourly\": 5}}'),
           ('garbage', 'online', 700, 0, '\"not an object\"');"
    ))
    .await;
    let pool = pool_in(&schema, 4).await;
    migrate(&pool).await.unwrap();
    let store = PgStore::new(pool);
    let json = |l: tower_budget::period::Limits| l.to_json();
    assert_eq!(
        json(store.limits(&ws("set")).await.unwrap()),
        serde_json::json!({"hourly": 5, "monthly": 500})
    );
    assert_eq!(
        json(store.limits(&ws("null-monthly")).await.unwrap()),
        serde_json::json!({"hourly": 5, "monthly": 2000})
    );
    assert_eq!(
        json(store.limits(&ws("garbage")).await.unwrap()),
        serde_json::json!({"monthly": 700})
    );
}

#[tokio::test]
async fn replicas_starting_together_take_turns() {
    let schema = fresh_schema().await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let pool = pool_in(&schema, 2).await;
        tasks.push(tokio::spawn(async move { migrate(&pool).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn an_edited_migration_is_refused() {
    let schema = fresh_schema().await;
    let pool = pool_in(&schema, 2).await;
    migrate(&pool).await.unwrap();
    pool.get()
        .await
        .unwrap()
        .execute(
            "UPDATE tower_budget_migrations SET checksum = checksum + 1 WHERE version = 1",
            &[],
        )
        .await
        .unwrap();
    assert!(matches!(
        migrate(&pool).await,
        Err(MigrateError::Changed { version: 1 })
    ));
}

#[tokio::test]
async fn a_failed_migration_changes_nothing() {
    let schema = fresh_schema().await;
    // A ledger table of another shape already exists, so indexing it fails half way through
    // the migration: the transaction rolls back everything before that too.
    admin_execute(&format!(
        "CREATE TABLE {schema}.workspaces (id TEXT PRIMARY KEY, status TEXT, budget_limit BIGINT, monthly_spend BIGINT);
         CREATE TABLE {schema}.workspace_spend_events (workspace_id TEXT, occurred_at TIMESTAMPTZ, delta_cents BIGINT);
         INSERT INTO {schema}.workspaces VALUES ('a', 'online', 100, 0);"
    ))
    .await;
    let pool = pool_in(&schema, 2).await;
    assert!(matches!(
        migrate(&pool).await,
        Err(MigrateError::Database(_))
    ));
    let client = pool.get().await.unwrap();
    let cols: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'workspaces'",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cols, 4, "no column was added");
    let tracked: Option<String> = client
        .query_one("SELECT to_regclass('tower_budget_migrations')::TEXT", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tracked, None, "no migration recorded");
}
