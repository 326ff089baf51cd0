//! SQL text built from the period table, once.
//!
//! Time: every statement takes "now" as `$2` and reads `COALESCE($2, now())`, so that the
//! database server's clock — the one clock every replica shares — stamps the ledger and places
//! the windows, unless a test injects a clock.

use std::sync::LazyLock;

use crate::period::Period;

/// "Now" for a statement: the injected clock's time, else the database's.
const NOW: &str = "COALESCE($2::TIMESTAMPTZ, now())";

/// A workspace row that is registered and not removed, by this crate (`removed_at`) or by the
/// software the database predates it with (`status = 'removed'`).
const LIVE: &str = "w.removed_at IS NULL AND w.status IS DISTINCT FROM 'removed'";

/// One text column per period with the stored limit when it is a JSON number, else NULL. The
/// value is never parsed as JSON on the client, so no stored `jsonb` — numbers beyond `i64`,
/// deep nesting, strings — can fail a read; the text is parsed by `Limits::from_stored_numbers`.
fn limit_columns() -> String {
    Period::all()
        .map(|p| {
            let name = p.name();
            format!(
                "CASE WHEN jsonb_typeof(w.budget_limits -> '{name}') = 'number' \
                 THEN w.budget_limits ->> '{name}' END AS \"limit_{name}\""
            )
        })
        .collect::<Vec<_>>()
        .join(",\n       ")
}

/// `$1` workspace id, `$2` now or NULL → one limit column per period (see [`limit_columns`]),
/// then one spend column per period. One round trip; per period one index probe at the
/// window's left edge, plus one shared probe for the running total at now.
pub(super) static STATUS: LazyLock<String> = LazyLock::new(|| {
    let mut columns = String::new();
    let mut joins = String::new();
    for p in Period::all() {
        let (i, secs) = (p.index(), p.window().as_secs());
        columns +=
            &format!(",\n       COALESCE(last.total_cents - w{i}.before_cents, 0) AS \"{p}\"");
        joins += &format!(
            "\nLEFT JOIN LATERAL (
    SELECT e.total_cents - e.delta_cents AS before_cents
    FROM workspace_spend_events e
    WHERE e.workspace_id = $1 AND e.occurred_at > {NOW} - interval '{secs} seconds' AND e.occurred_at <= {NOW}
    ORDER BY e.occurred_at, e.total_cents LIMIT 1) w{i} ON true"
        );
    }
    format!(
        "SELECT {limits}{columns}
FROM workspaces w
LEFT JOIN LATERAL ({last}) last ON true{joins}
WHERE w.id = $1 AND {LIVE}",
        limits = limit_columns(),
        last = &*LAST_TOTAL,
    )
});

/// `$1` workspace id, `$2` now or NULL, `$3…` one limit per period (NULL to skip) → per
/// period the time of the first ledger entry whose running total exceeds `total(now) − limit`
/// (once it leaves the window, spend is below the limit), then the statement's now.
pub(super) static RELEASE_TIMES: LazyLock<String> = LazyLock::new(|| {
    let columns: Vec<String> = Period::all()
        .map(|p| {
            let param = p.index() + 3;
            format!(
                "(SELECT e.occurred_at FROM workspace_spend_events e
      WHERE e.workspace_id = $1 AND e.total_cents > COALESCE(last.total_cents, 0) - ${param}::BIGINT
      ORDER BY e.total_cents LIMIT 1) AS \"{p}\""
            )
        })
        .collect();
    format!(
        "SELECT {},
       {NOW} AS now
FROM workspaces w
LEFT JOIN LATERAL ({}) last ON true
WHERE w.id = $1 AND {LIVE}",
        columns.join(",\n       "),
        &*LAST_TOTAL
    )
});

/// The running total of the last ledger entry at or before now.
static LAST_TOTAL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT e.total_cents FROM workspace_spend_events e
    WHERE e.workspace_id = $1 AND e.occurred_at <= {NOW}
    ORDER BY e.occurred_at DESC, e.total_cents DESC LIMIT 1"
    )
});

/// `$1` id, `$2` cumulative cents, `$3` seq as text, `$4` now or NULL (the database's clock).
pub(super) const RECORD_HEARTBEAT: &str =
    "SELECT o_known, o_delta_cents, o_stale FROM tower_budget_record_heartbeat($1, $2, $3::TEXT::NUMERIC, $4)";

/// Registering clears both removal marks (ours and the older software's).
pub(super) const REGISTER: &str = "INSERT INTO workspaces AS w (id) VALUES ($1)
    ON CONFLICT (id) DO UPDATE SET removed_at = NULL,
        status = CASE WHEN w.status = 'removed' THEN NULL ELSE w.status END";

pub(super) const REGISTER_AGENT: &str =
    "INSERT INTO workspaces AS w (id, agent_url, token_hash) VALUES ($1, $2, $3)
    ON CONFLICT (id) DO UPDATE
    SET agent_url = EXCLUDED.agent_url, token_hash = EXCLUDED.token_hash, removed_at = NULL,
        status = CASE WHEN w.status = 'removed' THEN NULL ELSE w.status END";

pub(super) static REGISTRATION: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT w.agent_url, w.token_hash FROM workspaces w WHERE w.id = $1 AND {LIVE}")
});

pub(super) const WORKSPACE_FOR_TOKEN: &str = "SELECT id FROM workspaces WHERE token_hash = $1";

pub(super) static REMOVE: LazyLock<String> = LazyLock::new(|| {
    format!("UPDATE workspaces w SET removed_at = {NOW} WHERE w.id = $1 AND {LIVE}")
});

pub(super) static LIMITS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM workspaces w WHERE w.id = $1 AND {LIVE}",
        limit_columns()
    )
});

/// A merge patch applied in the database: `$2` the period names to clear, `$3` an object of
/// the periods to set. Keys this version does not know (a period a newer replica added) stay as
/// they were; a stored value that is not an object is replaced. Returns the limits after it.
pub(super) static PATCH_LIMITS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE workspaces w SET budget_limits =
        (CASE WHEN jsonb_typeof(w.budget_limits) = 'object' THEN w.budget_limits ELSE '{{}}'::JSONB END
         - $2::TEXT[]) || $3::JSONB
    WHERE w.id = $1 AND {LIVE}
    RETURNING {}",
        limit_columns()
    )
});

/// Keeps the legacy monthly `budget_limit` equal to the monthly limit for older readers.
pub(super) const WRITE_LEGACY_LIMIT: &str = "UPDATE workspaces SET budget_limit = $2 WHERE id = $1";

pub(super) static LIST: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT w.id FROM workspaces w
    WHERE {LIVE} AND ($1::TEXT IS NULL OR w.id > $1)
    ORDER BY w.id LIMIT $2"
    )
});

/// Every workspace id (removed ones too: their old ledger entries are pruned as well).
pub(super) const PRUNE_WORKSPACES: &str =
    "SELECT id FROM workspaces WHERE ($1::TEXT IS NULL OR id > $1) ORDER BY id LIMIT $2";

/// One bounded batch of one workspace's entries older than `$2` (now or NULL) minus `$3`
/// seconds, at most `$4` of them.
pub(super) static PRUNE_BATCH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "DELETE FROM workspace_spend_events
    WHERE workspace_id = $1 AND total_cents IN (
        SELECT total_cents FROM workspace_spend_events
        WHERE workspace_id = $1 AND occurred_at < {NOW} - make_interval(secs => $3::FLOAT8)
        ORDER BY occurred_at, total_cents LIMIT $4)"
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_period_has_a_column() {
        for p in Period::all() {
            assert!(STATUS.contains(&format!("AS \"{p}\"")));
            assert!(STATUS.contains(&format!("AS \"limit_{p}\"")));
            assert!(STATUS.contains(&format!("interval '{} seconds'", p.window().as_secs())));
            assert!(RELEASE_TIMES.contains(&format!("AS \"{p}\"")));
            assert!(PATCH_LIMITS.contains(&format!("AS \"limit_{p}\"")));
        }
    }
}
