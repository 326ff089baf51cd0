//! SQL text built from the period table, once.

use std::sync::LazyLock;

use crate::period::Period;

/// `$1` workspace id, `$2` now → `budget_limits`, then one spend column per period.
/// One round trip; per period one index probe at the window's left edge, plus one shared probe
/// for the running total at `now`.
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
    WHERE e.workspace_id = $1 AND e.occurred_at > $2 - interval '{secs} seconds' AND e.occurred_at <= $2
    ORDER BY e.occurred_at, e.total_cents LIMIT 1) w{i} ON true"
        );
    }
    format!(
        "SELECT w.budget_limits{columns}
FROM workspaces w
LEFT JOIN LATERAL ({LAST_TOTAL}) last ON true{joins}
WHERE w.id = $1 AND w.removed_at IS NULL"
    )
});

/// `$1` workspace id, `$2` now, `$3…` one limit per period (NULL to skip) → per period the
/// time of the first ledger entry whose running total exceeds `total(now) − limit`: once it
/// leaves the window, spend is below the limit.
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
        "SELECT {}
FROM workspaces w
LEFT JOIN LATERAL ({LAST_TOTAL}) last ON true
WHERE w.id = $1 AND w.removed_at IS NULL",
        columns.join(",\n       ")
    )
});

/// The running total of the last ledger entry at or before `$2`.
const LAST_TOTAL: &str = "SELECT e.total_cents FROM workspace_spend_events e
    WHERE e.workspace_id = $1 AND e.occurred_at <= $2
    ORDER BY e.occurred_at DESC, e.total_cents DESC LIMIT 1";

pub(super) const RECORD_HEARTBEAT: &str =
    "SELECT o_known, o_delta_cents, o_stale FROM tower_budget_record_heartbeat($1, $2, $3::TEXT::NUMERIC, $4)";

pub(super) const REGISTER: &str = "INSERT INTO workspaces (id) VALUES ($1)
    ON CONFLICT (id) DO UPDATE SET removed_at = NULL";

pub(super) const REGISTER_AGENT: &str =
    "INSERT INTO workspaces (id, agent_url, token_hash) VALUES ($1, $2, $3)
    ON CONFLICT (id) DO UPDATE
    SET agent_url = EXCLUDED.agent_url, token_hash = EXCLUDED.token_hash, removed_at = NULL";

pub(super) const REGISTRATION: &str =
    "SELECT agent_url, token_hash FROM workspaces WHERE id = $1 AND removed_at IS NULL";

pub(super) const WORKSPACE_FOR_TOKEN: &str = "SELECT id FROM workspaces WHERE token_hash = $1";

pub(super) const REMOVE: &str =
    "UPDATE workspaces SET removed_at = $2 WHERE id = $1 AND removed_at IS NULL";

pub(super) const LIMITS: &str =
    "SELECT budget_limits FROM workspaces WHERE id = $1 AND removed_at IS NULL";

pub(super) const LIMITS_FOR_UPDATE: &str =
    "SELECT budget_limits FROM workspaces WHERE id = $1 AND removed_at IS NULL FOR UPDATE";

/// Keeps the legacy monthly `budget_limit` equal to the monthly limit for older readers.
pub(super) const WRITE_LIMITS: &str =
    "UPDATE workspaces SET budget_limits = $2, budget_limit = $3 WHERE id = $1";

pub(super) const LIST: &str = "SELECT id FROM workspaces
    WHERE removed_at IS NULL AND ($1::TEXT IS NULL OR id > $1)
    ORDER BY id LIMIT $2";

/// Every workspace id (removed ones too: their old ledger entries are pruned as well).
pub(super) const PRUNE_WORKSPACES: &str =
    "SELECT id FROM workspaces WHERE ($1::TEXT IS NULL OR id > $1) ORDER BY id LIMIT $2";

/// One bounded batch of one workspace's entries older than `$2`.
pub(super) const PRUNE_BATCH: &str = "DELETE FROM workspace_spend_events
    WHERE workspace_id = $1 AND total_cents IN (
        SELECT total_cents FROM workspace_spend_events
        WHERE workspace_id = $1 AND occurred_at < $2
        ORDER BY occurred_at, total_cents LIMIT $3)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_period_has_a_column() {
        for p in Period::all() {
            assert!(STATUS.contains(&format!("AS \"{p}\"")));
            assert!(STATUS.contains(&format!("interval '{} seconds'", p.window().as_secs())));
            assert!(RELEASE_TIMES.contains(&format!("AS \"{p}\"")));
        }
    }
}
