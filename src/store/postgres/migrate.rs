//! Embedded schema migrations (`migrations/V{n}__{name}.sql`, refinery's naming), applied in
//! order, each once, under an advisory lock so that replicas starting together take turns.

use deadpool_postgres::Pool;

struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// Every migration, in order. A new one is a new file and a new line here; applied files are
/// never edited (the runner refuses a database whose recorded checksum differs).
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "budget_ledger",
        sql: include_str!("../../../migrations/V1__budget_ledger.sql"),
    },
    Migration {
        version: 2,
        name: "agent_registration",
        sql: include_str!("../../../migrations/V2__agent_registration.sql"),
    },
    Migration {
        version: 3,
        name: "one_clock_removed_mark_saturating_totals",
        sql: include_str!("../../../migrations/V3__one_clock_removed_mark_saturating_totals.sql"),
    },
    Migration {
        version: 4,
        name: "change_notifications",
        sql: include_str!("../../../migrations/V4__change_notifications.sql"),
    },
    Migration {
        version: 5,
        name: "alerts",
        sql: include_str!("../../../migrations/V5__alerts.sql"),
    },
];

/// Arbitrary, fixed: "tower-budget" folded into an i64.
const LOCK_KEY: i64 = 0x746f_7765_725f_6264;

/// Why migrating failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// No connection could be had.
    #[error("cannot get a database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A statement failed; the migration's transaction was rolled back.
    #[error("migration failed: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// The database recorded a migration whose text differs from the embedded one.
    #[error("migration V{version} was applied with different contents; refusing to continue")]
    Changed {
        /// The migration's version.
        version: i32,
    },
}

/// Applies every pending migration to the pool's database (in its `search_path` schema), in
/// one transaction. Safe to run at every start and from several processes at once.
///
/// # Errors
/// [`MigrateError`] when the database is unreachable, a statement fails (nothing is applied),
/// or an applied migration's text was changed.
pub async fn migrate(pool: &Pool) -> Result<(), MigrateError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tower_budget_migrations (
             version    INT PRIMARY KEY,
             name       TEXT NOT NULL,
             checksum   BIGINT NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await?;
    let applied = tx
        .query("SELECT version, checksum FROM tower_budget_migrations", &[])
        .await?;
    for m in MIGRATIONS {
        let sum = checksum(m.sql);
        match applied.iter().find(|r| r.get::<_, i32>(0) == m.version) {
            Some(row) if row.get::<_, i64>(1) == sum => continue,
            Some(_) => return Err(MigrateError::Changed { version: m.version }),
            None => {}
        }
        tracing::info!(version = m.version, name = m.name, "applying migration");
        tx.batch_execute(m.sql).await?;
        tx.execute(
            "INSERT INTO tower_budget_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &sum],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// FNV-1a over the text: stable across builds and platforms.
fn checksum(sql: &str) -> i64 {
    let hash = sql.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    i64::from_ne_bytes(hash.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_are_increasing_and_named_like_their_files() {
        let versions: Vec<_> = super::MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]));
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        let embedded: Vec<_> = super::MIGRATIONS
            .iter()
            .map(|m| format!("V{}__{}.sql", m.version, m.name))
            .collect();
        assert_eq!(
            files, embedded,
            "every file in migrations/ is embedded, and only those"
        );
    }
}
