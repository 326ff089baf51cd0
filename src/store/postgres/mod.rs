//! The Postgres store: deadpool-postgres + tokio-postgres, schema in `migrations/`.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tower_budget::store::postgres::{migrate, PgStore, PoolOptions};
//!
//! let pool = PoolOptions::default().build("postgres://budget@127.0.0.1/budget")?;
//! migrate(&pool).await?;
//! let store = PgStore::new(pool);
//! # Ok(()) }
//! ```
//!
//! # Schema
//! - `workspaces`: the table of the platform the crate is added to, if it has one (`id`,
//!   `status` — `'removed'` counts as removed —, legacy `budget_limit`, `monthly_spend` =
//!   the agent's last cumulative report), plus `budget_limits jsonb`, the last accepted `seq`,
//!   the running ledger total, and `removed_at`.
//! - `workspace_spend_events`: the append-only ledger, keyed `(workspace_id, total_cents)`, with
//!   a covering index on `(workspace_id, occurred_at, total_cents)`.
//! - `tower_budget_record_heartbeat(…)`: one heartbeat as one atomic statement.
//!
//! [`PgStore::status`](crate::store::BudgetStore::status) is one statement whose cost is a fixed
//! number of index probes (one per period plus one), whatever the ledger's size. Every statement
//! on the request and heartbeat paths names exactly one workspace.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures_util::future::BoxFuture;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{
    AlertOutbox, BudgetPatch, BudgetReport, BudgetStatus, BudgetStore, Heartbeat, HeartbeatOutcome,
    PendingAlert, Registration, Registry, StoreError, TokenHash,
};
use crate::alerts::{AlertEvent, AlertKind, AlertThresholds};
use crate::clock::Clock;
use crate::period::{Limits, PerPeriod, Period, Spend};
use crate::WorkspaceId;

mod heartbeats;
mod listen;
mod migrate;
mod reads;
mod sql;

pub use deadpool_postgres;
pub use listen::{
    ChangeListener, ListenOptions, ListenTls, ListenerState, CHANNEL,
    CONNECTED_REGISTRATION_TTL_FACTOR, DEFAULT_CONNECTED_TTL, DEFAULT_DISCONNECTED_TTL,
    LISTEN_APPLICATION_NAME,
};
pub use migrate::{migrate, MigrateError};
pub use tokio_postgres;

/// The statement [`BudgetStore::status`] runs (`$1` workspace id, `$2` now), for `EXPLAIN`
/// and monitoring. It is built once from the period table.
pub fn status_sql() -> &'static str {
    &sql::STATUS
}

/// The statement [`BudgetStore::spend_history`] runs (`$1` workspace id, `$2` the first
/// bucket's start, `$3` the step in seconds, `$4` the number of buckets), for `EXPLAIN`.
pub fn history_sql() -> &'static str {
    &sql::HISTORY
}

/// The statement [`BudgetStore::list_reports`] runs (`$1` the id after which the page starts or
/// NULL, `$2` now or NULL, `$3` the page size), for `EXPLAIN`.
pub fn report_page_sql() -> &'static str {
    &sql::REPORT_PAGE
}

/// How ledger entries are pruned: this many per statement, so no statement holds locks long.
const PRUNE_BATCH: i64 = 5_000;

/// How long a store call may wait for the database once it has a connection, by default: a
/// little longer than the default server-side `statement_timeout`, so the server's own cancel
/// usually comes first.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(11);

/// Settings for [`PoolOptions::build`]. Every wait is bounded by default.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PoolOptions {
    /// Most connections open at once (default 16).
    pub max_size: usize,
    /// Longest wait for a free connection (default 2 s).
    pub wait_timeout: Duration,
    /// Longest wait to open a connection, TCP and startup included (default 5 s).
    pub create_timeout: Duration,
    /// Longest wait to check a pooled connection before reuse (default 2 s).
    pub recycle_timeout: Duration,
    /// Server-side `statement_timeout` for every statement (default 10 s).
    pub statement_timeout: Duration,
    /// Schema for the tables (sets `search_path`); `None` uses the server's default.
    pub schema: Option<String>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            max_size: 16,
            wait_timeout: Duration::from_secs(2),
            create_timeout: Duration::from_secs(5),
            recycle_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(10),
            schema: None,
        }
    }
}

/// A pool could not be configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolConfigError {
    /// The connection URL did not parse.
    #[error("invalid database url: {0}")]
    Url(#[source] tokio_postgres::Error),
    /// The schema name is not a plain identifier.
    #[error("schema must be letters, digits and '_', not starting with a digit")]
    Schema,
    /// deadpool refused the settings.
    #[error("cannot build pool: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
}

impl PoolOptions {
    /// Uses `schema` for the tables.
    #[must_use]
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Builds a pool for `url` (`postgres://user:pass@host:port/db` or key=value form),
    /// without TLS. For TLS, build a `deadpool_postgres::Pool` with your connector and pass it
    /// to [`PgStore::new`]. No connection is opened until first use.
    ///
    /// # Errors
    /// [`PoolConfigError`] for a malformed URL or schema name.
    pub fn build(&self, url: &str) -> Result<Pool, PoolConfigError> {
        let manager = Manager::from_config(
            self.connect_config(url)?,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Ok(Pool::builder(manager)
            .max_size(self.max_size)
            .wait_timeout(Some(self.wait_timeout))
            .create_timeout(Some(self.create_timeout))
            .recycle_timeout(Some(self.recycle_timeout))
            .runtime(Runtime::Tokio1)
            .build()?)
    }

    /// The connection settings [`build`](Self::build) gives the pool's connections (timeouts,
    /// keepalives, schema, `application_name`), for a connection outside the pool such as the
    /// [`ChangeListener`]'s.
    ///
    /// # Errors
    /// [`PoolConfigError`] for a malformed URL or schema name.
    pub fn connect_config(&self, url: &str) -> Result<tokio_postgres::Config, PoolConfigError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(PoolConfigError::Url)?;
        // Options given in the URL (`?options=-c…`) are kept, and win: ours are added only for
        // settings the URL does not make.
        let given = config.get_options().unwrap_or_default().to_owned();
        // `-c a_b=…` and `--a-b=…` are the same setting.
        let named = given.replace('-', "_");
        let mut options = given.clone();
        let mut add = |setting: &str, value: String| {
            if !named.contains(setting) {
                if !options.is_empty() {
                    options.push(' ');
                }
                options += &format!("-c {setting}={value}");
            }
        };
        add(
            "statement_timeout",
            self.statement_timeout.as_millis().to_string(),
        );
        // A transaction left open by a client that vanished must not hold its row locks.
        add(
            "idle_in_transaction_session_timeout",
            (self.statement_timeout.as_millis() + 5_000).to_string(),
        );
        if let Some(schema) = &self.schema {
            let plain = schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
                && schema.chars().next().is_some_and(|c| !c.is_ascii_digit());
            if !plain {
                return Err(PoolConfigError::Schema);
            }
            options += &format!(" -c search_path={schema}");
        }
        config.options(&options);
        config.connect_timeout(self.create_timeout);
        if config.get_application_name().is_none() {
            // Operators find the pool's sessions in pg_stat_activity by this name.
            config.application_name("tower-budget");
        }
        // A server that vanishes without closing the socket is noticed, not waited on for ever.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        config.keepalives_interval(Duration::from_secs(10));
        config.keepalives_retries(3);
        // Data the server never acknowledges does not keep a connection alive either.
        config.tcp_user_timeout(Duration::from_secs(30));
        Ok(config)
    }
}

/// A [`BudgetStore`] on PostgreSQL. Cheap to clone (the pool is shared).
///
/// - **One clock.** Ledger timestamps and window edges come from the database server's clock
///   (`now()`), the one clock every replica shares: a gateway whose own clock is off changes
///   nothing that is counted. Per workspace the ledger stays in time order even if the database's
///   clock steps back.
/// - **Bounded, cancellation-safe calls.** Every call runs as its own task on a pooled
///   connection: a caller that stops waiting (a budget check past its timeout) does not cancel it
///   half-way, so no connection goes back to the pool with a statement still in flight. A call
///   that gets no answer within the query timeout gives up and its connection is closed rather
///   than reused. Waits for a connection are bounded by the pool's own timeouts.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: Pool,
    /// `None`: the database's clock. Tests inject one to place events at exact instants.
    clock: Option<Arc<dyn Clock>>,
    query_timeout: Duration,
    /// Concurrent heartbeats share a transaction (see `heartbeats`).
    heartbeats: Arc<heartbeats::Heartbeats>,
    /// Concurrent status reads share a statement (see `reads`).
    reads: Arc<reads::StatusReads>,
}

/// The database did not answer a store call in time.
#[derive(Debug, thiserror::Error)]
#[error("the database did not answer within {0:?}")]
struct QueryTimeout(Duration);

type Params = Vec<Box<dyn ToSql + Send + Sync>>;

impl PgStore {
    /// A store on `pool`, whose database has been [`migrate`]d.
    pub fn new(pool: Pool) -> Self {
        PgStore {
            heartbeats: Arc::new(heartbeats::Heartbeats::new(
                pool.clone(),
                DEFAULT_QUERY_TIMEOUT,
            )),
            reads: Arc::new(reads::StatusReads::new(pool.clone(), DEFAULT_QUERY_TIMEOUT)),
            pool,
            clock: None,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
        }
    }

    /// Uses `clock` instead of the database's for ledger timestamps and window ends. For tests
    /// (a `ManualClock`); in production every replica must read the same clock, the database's.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// The longest a call waits for the database once it has a connection (default
    /// [`DEFAULT_QUERY_TIMEOUT`]); a connection that overruns it is closed, not reused.
    #[must_use]
    pub fn with_query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout;
        self.heartbeats = Arc::new(heartbeats::Heartbeats::new(self.pool.clone(), timeout));
        self.reads = Arc::new(reads::StatusReads::new(self.pool.clone(), timeout));
        self
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The injected clock's time, or `None`: the statement uses the database's `now()`.
    fn now(&self) -> Option<DateTime<Utc>> {
        self.clock.as_ref().map(|c| c.now())
    }

    /// Runs `op` on a pooled connection as a task of its own, bounded by the query timeout.
    async fn run<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Object) -> BoxFuture<'c, Result<T, StoreError>> + Send + 'static,
    {
        run_on(self.pool.clone(), self.query_timeout, op).await
    }

    /// One statement, at most one row.
    async fn query_opt(
        &self,
        sql: &'static str,
        params: Params,
    ) -> Result<Option<Row>, StoreError> {
        self.run(move |client| {
            Box::pin(async move {
                let stmt = client.prepare_cached(sql).await.map_err(db)?;
                client.query_opt(&stmt, &refs(&params)).await.map_err(db)
            })
        })
        .await
    }

    /// One statement; the number of rows it changed.
    async fn execute(&self, sql: &'static str, params: Params) -> Result<u64, StoreError> {
        self.run(move |client| {
            Box::pin(async move {
                let stmt = client.prepare_cached(sql).await.map_err(db)?;
                client.execute(&stmt, &refs(&params)).await.map_err(db)
            })
        })
        .await
    }
}

/// Runs `op` on a connection from `pool` as a task of its own, bounded by `limit` once it has
/// the connection: a caller that stops waiting does not cancel it half-way, and a connection
/// whose statement overran is closed, not reused.
async fn run_on<T, F>(pool: Pool, limit: Duration, op: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: for<'c> FnOnce(&'c mut Object) -> BoxFuture<'c, Result<T, StoreError>> + Send + 'static,
{
    let task = tokio::spawn(async move {
        let mut client = pool.get().await.map_err(StoreError::unavailable)?;
        let outcome = tokio::time::timeout(limit, op(&mut client)).await;
        match outcome {
            Ok(result) => result,
            Err(_) => {
                // Its statement may still be running: never hand this connection out again.
                drop(Object::take(client));
                Err(StoreError::unavailable(QueryTimeout(limit)))
            }
        }
    });
    task.await.map_err(StoreError::unavailable)?
}

fn refs(params: &Params) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect()
}

fn db(e: tokio_postgres::Error) -> StoreError {
    StoreError::unavailable(e)
}

/// The limits from the period columns that start at `first` (see `sql::limit_columns`).
fn limits_of(row: &Row, first: usize) -> Limits {
    Limits::from_stored_numbers(|p| row.get::<_, Option<&str>>(first + p.index()))
}

/// A status row: limit columns, then spend columns.
fn status_of(row: &Row) -> BudgetStatus {
    let spend_at = Period::all().len();
    BudgetStatus {
        limits: limits_of(row, 0),
        spend: Spend::from_fn(|p| row.get::<_, i64>(spend_at + p.index())),
    }
}

/// A report row: the status columns, then `alert_thresholds` and `forecast_{period}`.
fn report_of(row: &Row) -> BudgetReport {
    let thresholds: Option<Vec<i16>> = row.get("alert_thresholds");
    let status = status_of(row);
    let exceeded = status.exceeded_periods();
    let now: DateTime<Utc> = row.get("now");
    BudgetReport {
        retry_after: PerPeriod::from_fn(|p| {
            let leaves_at: Option<DateTime<Utc>> = row.get(format!("release_{p}").as_str());
            // The limits as the status parsed them decide what is exceeded.
            exceeded
                .contains(&p)
                .then(|| p.time_until_out(leaves_at?, now))
                .flatten()
        }),
        status,
        alert_thresholds: AlertThresholds::from_stored(thresholds.as_deref()),
        exhausted_in_seconds: PerPeriod::from_fn(|p| {
            let secs: Option<i64> = row.get(format!("forecast_{p}").as_str());
            secs.and_then(|s| u64::try_from(s).ok())
        }),
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[async_trait]
impl BudgetStore for PgStore {
    async fn register(&self, workspace: &WorkspaceId) -> Result<(), StoreError> {
        self.execute(sql::REGISTER, vec![Box::new(workspace.to_string())])
            .await?;
        Ok(())
    }

    async fn remove(&self, workspace: &WorkspaceId) -> Result<(), StoreError> {
        let changed = self
            .execute(
                &sql::REMOVE,
                vec![Box::new(workspace.to_string()), Box::new(self.now())],
            )
            .await?;
        match changed {
            0 => Err(StoreError::NotFound),
            _ => Ok(()),
        }
    }

    async fn limits(&self, workspace: &WorkspaceId) -> Result<Limits, StoreError> {
        let row = self
            .query_opt(&sql::LIMITS, vec![Box::new(workspace.to_string())])
            .await?;
        row.map(|r| limits_of(&r, 0)).ok_or(StoreError::NotFound)
    }

    async fn patch_budget(
        &self,
        workspace: &WorkspaceId,
        patch: &BudgetPatch,
    ) -> Result<BudgetReport, StoreError> {
        let ws = workspace.to_string();
        let now = self.now();
        let clear: Vec<String> = Period::all()
            .filter(|&p| patch.limits.get(p) == Some(None))
            .map(|p| p.name().to_owned())
            .collect();
        let set: serde_json::Map<String, serde_json::Value> = Period::all()
            .filter_map(|p| Some((p.name().to_owned(), patch.limits.get(p)??.into())))
            .collect();
        let set = serde_json::Value::Object(set);
        let set_thresholds = patch.alert_thresholds.is_some();
        let thresholds: Option<Vec<i16>> = patch.alert_thresholds.clone().flatten().map(|t| {
            t.as_slice()
                .iter()
                .filter_map(|&v| i16::try_from(v).ok())
                .collect()
        });
        self.run(move |client| {
            Box::pin(async move {
                // Lock, merge, legacy column, report and alert decision in one transaction: a
                // failure anywhere leaves everything as it was, and the events are decided
                // against the limits this change replaced.
                let tx = client.transaction().await.map_err(db)?;
                let lock = tx.prepare_cached(&sql::LOCK_LIMITS).await.map_err(db)?;
                let locked = tx
                    .query_opt(&lock, &[&ws, &now])
                    .await
                    .map_err(db)?
                    .ok_or(StoreError::NotFound)?;
                let old = limits_of(&locked, 0);
                // Read and decide at the time the lock says (see `sql::LOCK_LIMITS`).
                let now = locked
                    .try_get::<_, Option<DateTime<Utc>>>("at")
                    .ok()
                    .flatten()
                    .or(now);
                let merge = tx.prepare_cached(&sql::PATCH_LIMITS).await.map_err(db)?;
                let row = tx
                    .query_opt(&merge, &[&ws, &clear, &set, &set_thresholds, &thresholds])
                    .await
                    .map_err(db)?
                    .ok_or(StoreError::NotFound)?;
                let legacy_monthly = limits_of(&row, 0).get(Period::MONTHLY);
                let legacy = tx
                    .prepare_cached(sql::WRITE_LEGACY_LIMIT)
                    .await
                    .map_err(db)?;
                tx.execute(&legacy, &[&ws, &legacy_monthly])
                    .await
                    .map_err(db)?;
                let read = tx.prepare_cached(&sql::REPORT).await.map_err(db)?;
                let report = tx
                    .query_opt(&read, &[&ws, &now])
                    .await
                    .map_err(db)?
                    .map(|r| report_of(&r))
                    .ok_or(StoreError::NotFound)?;
                decide_alerts(&tx, &ws, now, &old, &report.status).await?;
                tx.commit().await.map_err(db)?;
                Ok(report)
            })
        })
        .await
    }

    async fn status(&self, workspace: &WorkspaceId) -> Result<BudgetStatus, StoreError> {
        self.reads.status(workspace, self.now()).await
    }

    async fn report(&self, workspace: &WorkspaceId) -> Result<BudgetReport, StoreError> {
        let row = self
            .query_opt(
                &sql::REPORT,
                vec![Box::new(workspace.to_string()), Box::new(self.now())],
            )
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(report_of(&row))
    }

    async fn retry_after(
        &self,
        workspace: &WorkspaceId,
        over: &Limits,
    ) -> Result<PerPeriod<Option<Duration>>, StoreError> {
        let mut params: Params = vec![Box::new(workspace.to_string()), Box::new(self.now())];
        params.extend(Period::all().map(|p| Box::new(over.get(p).filter(|l| *l > 0)) as Box<_>));
        let row = self
            .query_opt(&sql::RELEASE_TIMES, params)
            .await?
            .ok_or(StoreError::NotFound)?;
        let now: DateTime<Utc> = row.get(Period::all().len());
        Ok(PerPeriod::from_fn(|p| {
            let leaves_at: Option<DateTime<Utc>> = row.get(p.index());
            p.time_until_out(leaves_at?, now)
        }))
    }

    async fn record_heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatOutcome, StoreError> {
        self.heartbeats.record(hb, self.now()).await
    }

    async fn spend_history(
        &self,
        workspace: &WorkspaceId,
        step: Duration,
        from: DateTime<Utc>,
        buckets: usize,
    ) -> Result<Vec<i64>, StoreError> {
        let ws = workspace.to_string();
        let n = i32::try_from(buckets).map_err(|_| {
            StoreError::Refused(format!("{buckets} buckets are too many for one query"))
        })?;
        let step = seconds(step);
        let rows = self
            .run(move |client| {
                Box::pin(async move {
                    let stmt = client.prepare_cached(&sql::HISTORY).await.map_err(db)?;
                    client
                        .query(&stmt, &[&ws, &from, &step, &n])
                        .await
                        .map_err(db)
                })
            })
            .await?;
        if rows.is_empty() {
            return Err(StoreError::NotFound);
        }
        let totals: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        Ok(totals.windows(2).map(|w| w[1] - w[0]).collect())
    }

    async fn list_workspaces(
        &self,
        after: Option<&WorkspaceId>,
        limit: usize,
    ) -> Result<Vec<WorkspaceId>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let after = after.map(WorkspaceId::to_string);
        let rows = self
            .run(move |client| {
                Box::pin(async move {
                    let stmt = client.prepare_cached(&sql::LIST).await.map_err(db)?;
                    client.query(&stmt, &[&after, &limit]).await.map_err(db)
                })
            })
            .await?;
        // Ids written by older software that do not validate are left out, not fatal.
        Ok(rows
            .iter()
            .filter_map(|r| WorkspaceId::new(r.get(0)).ok())
            .collect())
    }

    async fn list_reports(
        &self,
        after: Option<&WorkspaceId>,
        limit: usize,
    ) -> Result<Vec<(WorkspaceId, BudgetReport)>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let after = after.map(WorkspaceId::to_string);
        let now = self.now();
        let rows = self
            .run(move |client| {
                Box::pin(async move {
                    let stmt = client.prepare_cached(&sql::REPORT_PAGE).await.map_err(db)?;
                    client
                        .query(&stmt, &[&after, &now, &limit])
                        .await
                        .map_err(db)
                })
            })
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| Some((WorkspaceId::new(r.get("id")).ok()?, report_of(r))))
            .collect())
    }

    async fn prune(&self) -> Result<u64, StoreError> {
        let retention_secs = Period::retention().as_secs_f64();
        let mut after: Option<String> = None;
        let mut pruned = 0;
        loop {
            let page = after.clone();
            let ids: Vec<String> = self
                .run(move |client| {
                    Box::pin(async move {
                        let stmt = client
                            .prepare_cached(sql::PRUNE_WORKSPACES)
                            .await
                            .map_err(db)?;
                        let rows = client
                            .query(&stmt, &[&page, &1_000_i64])
                            .await
                            .map_err(db)?;
                        Ok(rows.iter().map(|r| r.get(0)).collect())
                    })
                })
                .await?;
            for id in &ids {
                // Autocommit batches: each statement is short, so the ledger is never locked long.
                loop {
                    let n = self
                        .execute(
                            &sql::PRUNE_BATCH,
                            vec![
                                Box::new(id.clone()),
                                Box::new(self.now()),
                                Box::new(retention_secs),
                                Box::new(PRUNE_BATCH),
                            ],
                        )
                        .await?;
                    pruned += n;
                    if n < PRUNE_BATCH as u64 {
                        break;
                    }
                }
            }
            match ids.into_iter().last() {
                Some(last) => after = Some(last),
                None => return Ok(pruned),
            }
        }
    }
}

/// Why an outbox row was not claimed.
enum Unreadable {
    /// An event kind this version does not know.
    Kind,
    /// A column that does not read as this crate writes it.
    Malformed,
}

/// A claimed outbox row.
fn pending_alert(r: &Row) -> Result<PendingAlert, Unreadable> {
    let bad = |_| Unreadable::Malformed;
    let kind: &str = r.try_get(3).map_err(bad)?;
    let kind = AlertKind::from_name(kind).ok_or(Unreadable::Kind)?;
    let workspace: &str = r.try_get(0).map_err(bad)?;
    Ok(PendingAlert {
        key: r.try_get(1).map_err(bad)?,
        event: AlertEvent {
            id: r.try_get(2).map_err(bad)?,
            kind,
            workspace: WorkspaceId::new(workspace).map_err(|_| Unreadable::Malformed)?,
            period: r.try_get(4).map_err(bad)?,
            threshold: u16::try_from(r.try_get::<_, i32>(5).map_err(bad)?)
                .map_err(|_| Unreadable::Malformed)?,
            limit: r.try_get(6).map_err(bad)?,
            spend: r.try_get(7).map_err(bad)?,
            at: r.try_get(8).map_err(bad)?,
        },
        attempts: u32::try_from(r.try_get::<_, i32>(9).map_err(bad)?).unwrap_or(u32::MAX),
        delivered_to: r.try_get(10).map_err(bad)?,
    })
}

/// Decides the alert events of a change from the limits `old` to `after` (its spend read at
/// `now`, which a limit change does not move), in `tx`, which holds the workspace's row lock;
/// how many events were decided.
async fn decide_alerts(
    tx: &deadpool_postgres::Transaction<'_>,
    ws: &String,
    now: Option<DateTime<Utc>>,
    old: &Limits,
    after: &BudgetStatus,
) -> Result<u64, StoreError> {
    let spend: Vec<i64> = Period::all().map(|p| after.spend[p]).collect();
    let step = tx.prepare_cached(sql::ALERT_STEP).await.map_err(db)?;
    let row = tx
        .query_one(
            &step,
            &[
                ws,
                &now,
                &*sql::PERIOD_NAMES,
                &limit_array(old),
                &limit_array(&after.limits),
                &spend,
                &spend,
            ],
        )
        .await
        .map_err(db)?;
    Ok(u64::try_from(row.get::<_, i32>(0)).unwrap_or(0))
}

/// Limits as a SQL array in period-table order (NULL for no limit).
fn limit_array(limits: &Limits) -> Vec<Option<i64>> {
    Period::all().map(|p| limits.get(p)).collect()
}

#[async_trait]
impl AlertOutbox for PgStore {
    async fn claim_alerts(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<PendingAlert>, StoreError> {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = self
            .run({
                let now = self.now();
                move |client| {
                    Box::pin(async move {
                        let stmt = client.prepare_cached(sql::CLAIM_ALERTS).await.map_err(db)?;
                        client
                            .query(&stmt, &[&max, &seconds(lease), &now])
                            .await
                            .map_err(db)
                    })
                }
            })
            .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            match pending_alert(row) {
                Ok(alert) => claimed.push(alert),
                // A kind a newer version writes: left to it (the lease runs out, a newer
                // replica claims it; else it expires after 24 h).
                Err(Unreadable::Kind) => {}
                Err(Unreadable::Malformed) => {
                    // Written by other software and unreadable: retrying cannot help, and it
                    // would hold back the workspace's later events. Dropped and counted.
                    let (ws, seq): (String, i64) = (row.get(0), row.get(1));
                    tracing::warn!(workspace = %ws, seq, "dropping an alert event this version cannot read");
                    metrics::counter!("tower_budget_alert_events_dropped_total").increment(1);
                    if let Err(e) = self
                        .execute(sql::DROP_ALERT, vec![Box::new(ws), Box::new(seq)])
                        .await
                    {
                        tracing::debug!(error = %e, "could not drop an unreadable alert event");
                    }
                }
            }
        }
        Ok(claimed)
    }

    async fn alert_delivered(&self, alert: &PendingAlert) -> Result<(), StoreError> {
        self.execute(
            sql::ALERT_DELIVERED,
            vec![
                Box::new(alert.event.workspace.to_string()),
                Box::new(alert.key),
            ],
        )
        .await?;
        Ok(())
    }

    async fn alert_failed(
        &self,
        alert: &PendingAlert,
        delivered_to: &[String],
        retry_in: Duration,
    ) -> Result<(), StoreError> {
        self.execute(
            sql::ALERT_FAILED,
            vec![
                Box::new(alert.event.workspace.to_string()),
                Box::new(alert.key),
                Box::new(i32::try_from(alert.attempts).unwrap_or(i32::MAX)),
                Box::new(delivered_to.to_vec()),
                Box::new(seconds(retry_in)),
                Box::new(self.now()),
            ],
        )
        .await?;
        Ok(())
    }

    async fn expire_alerts(&self, max_age: Duration) -> Result<u64, StoreError> {
        self.execute(
            sql::EXPIRE_ALERTS,
            vec![Box::new(seconds(max_age)), Box::new(self.now())],
        )
        .await
    }

    async fn sweep_recovered(&self) -> Result<u64, StoreError> {
        let mut after: Option<String> = None;
        let (mut decided, mut failures) = (0, 0);
        loop {
            let page = after.clone();
            let ids: Vec<String> = self
                .run(move |client| {
                    Box::pin(async move {
                        let stmt = client
                            .prepare_cached(&sql::EXCEEDED_WORKSPACES)
                            .await
                            .map_err(db)?;
                        let rows = client.query(&stmt, &[&page]).await.map_err(db)?;
                        Ok(rows.iter().map(|r| r.get(0)).collect())
                    })
                })
                .await?;
            for id in &ids {
                let (ws, now) = (id.clone(), self.now());
                let settled = self
                    .run(move |client| {
                        Box::pin(async move {
                            let tx = client.transaction().await.map_err(db)?;
                            let lock = tx.prepare_cached(&sql::LOCK_EXCEEDED).await.map_err(db)?;
                            let Some(locked) =
                                tx.query_opt(&lock, &[&ws, &now]).await.map_err(db)?
                            else {
                                return Ok(0);
                            };
                            let now = locked
                                .try_get::<_, Option<DateTime<Utc>>>(0)
                                .ok()
                                .flatten()
                                .or(now);
                            let read = tx.prepare_cached(&sql::STATUS).await.map_err(db)?;
                            let Some(status) =
                                tx.query_opt(&read, &[&ws, &now]).await.map_err(db)?
                            else {
                                return Ok(0);
                            };
                            let status = status_of(&status);
                            let decided =
                                decide_alerts(&tx, &ws, now, &status.limits, &status).await?;
                            tx.commit().await.map_err(db)?;
                            Ok(decided)
                        })
                    })
                    .await;
                match settled {
                    Ok(n) => {
                        decided += n;
                        failures = 0;
                    }
                    // One workspace that fails does not stop the others (the next sweep retries
                    // it); a database that fails them all stops the sweep.
                    Err(e) if failures < 2 => {
                        failures += 1;
                        tracing::debug!(workspace = %id, error = %e, "recovery sweep skipped a workspace");
                    }
                    Err(e) => return Err(e),
                }
            }
            match ids.into_iter().last() {
                Some(last) => after = Some(last),
                None => return Ok(decided),
            }
        }
    }
}

#[async_trait]
impl Registry for PgStore {
    async fn register_agent(
        &self,
        workspace: &WorkspaceId,
        registration: &Registration,
    ) -> Result<(), StoreError> {
        let hash = registration.token_hash.map(|h| h.as_bytes().to_vec());
        self.execute(
            sql::REGISTER_AGENT,
            vec![
                Box::new(workspace.to_string()),
                Box::new(registration.agent_url.clone()),
                Box::new(hash),
            ],
        )
        .await?;
        Ok(())
    }

    async fn registration(&self, workspace: &WorkspaceId) -> Result<Registration, StoreError> {
        let row = self
            .query_opt(&sql::REGISTRATION, vec![Box::new(workspace.to_string())])
            .await?
            .ok_or(StoreError::NotFound)?;
        let hash: Option<Vec<u8>> = row.get(1);
        Ok(Registration {
            agent_url: row.get(0),
            token_hash: hash
                .and_then(|h| h.try_into().ok())
                .map(TokenHash::from_bytes),
        })
    }

    async fn workspace_for_token(
        &self,
        token_hash: &TokenHash,
    ) -> Result<Option<WorkspaceId>, StoreError> {
        let row = self
            .query_opt(
                sql::WORKSPACE_FOR_TOKEN,
                vec![Box::new(token_hash.as_bytes().to_vec())],
            )
            .await?;
        Ok(row.and_then(|r| WorkspaceId::new(r.get(0)).ok()))
    }
}
