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
//! - `workspaces`: the seed's table (`id`, `status`, legacy `budget_limit`, `monthly_spend` =
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
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::ToSql;

use super::{
    BudgetStatus, BudgetStore, Heartbeat, HeartbeatOutcome, Registration, StoreError, TokenHash,
};
use crate::clock::{Clock, SystemClock};
use crate::period::{Limits, LimitsPatch, PerPeriod, Period, Spend};
use crate::WorkspaceId;

mod migrate;
mod sql;

pub use deadpool_postgres;
pub use migrate::{migrate, MigrateError};

/// The statement [`BudgetStore::status`] runs (`$1` workspace id, `$2` now), for `EXPLAIN`
/// and monitoring. It is built once from the period table.
pub fn status_sql() -> &'static str {
    &sql::STATUS
}

/// How ledger entries are pruned: this many per statement, so no statement holds locks long.
const PRUNE_BATCH: i64 = 5_000;

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
        let mut config: tokio_postgres::Config = url.parse().map_err(PoolConfigError::Url)?;
        // Options given in the URL (`?options=-c…`) are kept; ours come after them.
        let mut options = config
            .get_options()
            .map(|o| format!("{o} "))
            .unwrap_or_default();
        options += &format!(
            "-c statement_timeout={}",
            self.statement_timeout.as_millis()
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
        let manager = Manager::from_config(
            config,
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
}

/// A [`BudgetStore`] on PostgreSQL. Cheap to clone (the pool is shared).
///
/// Ledger timestamps and window ends come from this process's clock (keep replicas on NTP);
/// per workspace the ledger stays in time order even if two replicas' clocks disagree.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: Pool,
    clock: Arc<dyn Clock>,
}

impl PgStore {
    /// A store on `pool`, whose database has been [`migrate`]d.
    pub fn new(pool: Pool) -> Self {
        PgStore {
            pool,
            clock: Arc::new(SystemClock),
        }
    }

    /// Uses `clock` for ledger timestamps and window ends (tests inject a `ManualClock`).
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(StoreError::unavailable)
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(db)?;
        client.query_opt(&stmt, params).await.map_err(db)
    }
}

fn db(e: tokio_postgres::Error) -> StoreError {
    StoreError::unavailable(e)
}

fn limits_of(row: &tokio_postgres::Row) -> Limits {
    row.get::<_, Option<serde_json::Value>>(0)
        .map_or_else(Limits::none, |v| Limits::from_stored(&v))
}

#[async_trait]
impl BudgetStore for PgStore {
    async fn register(&self, workspace: &WorkspaceId) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql::REGISTER).await.map_err(db)?;
        client
            .execute(&stmt, &[&workspace.as_str()])
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn register_agent(
        &self,
        workspace: &WorkspaceId,
        registration: &Registration,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(sql::REGISTER_AGENT)
            .await
            .map_err(db)?;
        let hash = registration.token_hash.map(|h| h.0.to_vec());
        client
            .execute(
                &stmt,
                &[&workspace.as_str(), &registration.agent_url, &hash],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn registration(&self, workspace: &WorkspaceId) -> Result<Registration, StoreError> {
        let row = self
            .query_opt(sql::REGISTRATION, &[&workspace.as_str()])
            .await?
            .ok_or(StoreError::NotFound)?;
        let hash: Option<Vec<u8>> = row.get(1);
        Ok(Registration {
            agent_url: row.get(0),
            token_hash: hash.and_then(|h| h.try_into().ok()).map(TokenHash),
        })
    }

    async fn workspace_for_token(
        &self,
        token_hash: &TokenHash,
    ) -> Result<Option<WorkspaceId>, StoreError> {
        let hash = token_hash.0.to_vec();
        let row = self.query_opt(sql::WORKSPACE_FOR_TOKEN, &[&hash]).await?;
        Ok(row.and_then(|r| WorkspaceId::new(r.get(0)).ok()))
    }

    async fn remove(&self, workspace: &WorkspaceId) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql::REMOVE).await.map_err(db)?;
        let now = self.clock.now();
        match client
            .execute(&stmt, &[&workspace.as_str(), &now])
            .await
            .map_err(db)?
        {
            0 => Err(StoreError::NotFound),
            _ => Ok(()),
        }
    }

    async fn limits(&self, workspace: &WorkspaceId) -> Result<Limits, StoreError> {
        let row = self.query_opt(sql::LIMITS, &[&workspace.as_str()]).await?;
        row.as_ref().map(limits_of).ok_or(StoreError::NotFound)
    }

    async fn patch_limits(
        &self,
        workspace: &WorkspaceId,
        patch: &LimitsPatch,
    ) -> Result<Limits, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let read = tx
            .prepare_cached(sql::LIMITS_FOR_UPDATE)
            .await
            .map_err(db)?;
        let row = tx
            .query_opt(&read, &[&workspace.as_str()])
            .await
            .map_err(db)?;
        let limits = limits_of(&row.ok_or(StoreError::NotFound)?).patched(patch);
        let write = tx.prepare_cached(sql::WRITE_LIMITS).await.map_err(db)?;
        let legacy_monthly = limits.get(Period::MONTHLY);
        tx.execute(
            &write,
            &[&workspace.as_str(), &limits.to_json(), &legacy_monthly],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(limits)
    }

    async fn status(&self, workspace: &WorkspaceId) -> Result<BudgetStatus, StoreError> {
        let now = self.clock.now();
        let row = self
            .query_opt(&sql::STATUS, &[&workspace.as_str(), &now])
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(BudgetStatus {
            limits: limits_of(&row),
            spend: Spend::from_fn(|p| row.get::<_, i64>(p.index() + 1)),
        })
    }

    async fn retry_after(
        &self,
        workspace: &WorkspaceId,
        over: &Limits,
    ) -> Result<PerPeriod<Option<Duration>>, StoreError> {
        let now = self.clock.now();
        let limits = PerPeriod::from_fn(|p| over.get(p).filter(|l| *l > 0));
        let ws = workspace.as_str();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&ws, &now];
        params.extend(limits.iter().map(|(_, l)| l as &(dyn ToSql + Sync)));
        let row = self
            .query_opt(&sql::RELEASE_TIMES, &params)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(PerPeriod::from_fn(|p| {
            let leaves_at: Option<DateTime<Utc>> = row.get(p.index());
            let window = chrono::Duration::from_std(p.window()).ok()?;
            (leaves_at? + window - now).to_std().ok()
        }))
    }

    async fn record_heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatOutcome, StoreError> {
        let now = self.clock.now();
        let seq = hb.seq.map(|s| s.to_string());
        let row = self
            .query_opt(
                sql::RECORD_HEARTBEAT,
                &[&hb.workspace.as_str(), &hb.reported_cents(), &seq, &now],
            )
            .await
            .map_err(|e| match e {
                // bigint overflow of the running total: the data cannot take it, retrying won't help.
                StoreError::Unavailable(src)
                    if src
                        .downcast_ref::<tokio_postgres::Error>()
                        .and_then(tokio_postgres::Error::code)
                        == Some(&tokio_postgres::error::SqlState::NUMERIC_VALUE_OUT_OF_RANGE) =>
                {
                    StoreError::Refused("running spend total overflows i64".into())
                }
                other => other,
            })?
            .ok_or_else(|| StoreError::Refused("heartbeat function returned no row".into()))?;
        if !row.get::<_, bool>(0) {
            return Err(StoreError::NotFound);
        }
        Ok(HeartbeatOutcome {
            recorded_delta_cents: row.get(1),
            stale: row.get(2),
        })
    }

    async fn list_workspaces(
        &self,
        after: Option<&WorkspaceId>,
        limit: usize,
    ) -> Result<Vec<WorkspaceId>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql::LIST).await.map_err(db)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(&stmt, &[&after.map(WorkspaceId::as_str), &limit])
            .await
            .map_err(db)?;
        // Ids written by older software that do not validate are left out, not fatal.
        Ok(rows
            .iter()
            .filter_map(|r| WorkspaceId::new(r.get(0)).ok())
            .collect())
    }

    async fn prune(&self) -> Result<u64, StoreError> {
        let retention = chrono::Duration::from_std(Period::retention())
            .map_err(|e| StoreError::Refused(e.to_string()))?;
        let cutoff = self.clock.now() - retention;
        let client = self.client().await?;
        let page = client
            .prepare_cached(sql::PRUNE_WORKSPACES)
            .await
            .map_err(db)?;
        let batch = client.prepare_cached(sql::PRUNE_BATCH).await.map_err(db)?;
        let mut after: Option<String> = None;
        let mut pruned = 0;
        loop {
            let ids: Vec<String> = client
                .query(&page, &[&after, &1_000_i64])
                .await
                .map_err(db)?
                .iter()
                .map(|r| r.get(0))
                .collect();
            for id in &ids {
                // Autocommit batches: each statement is short, so the ledger is never locked long.
                loop {
                    let n = client
                        .execute(&batch, &[id, &cutoff, &PRUNE_BATCH])
                        .await
                        .map_err(db)?;
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
