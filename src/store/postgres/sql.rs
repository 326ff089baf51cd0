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

/// A row whose id `WorkspaceId::new` accepts (software before this crate could store others):
/// listings filter on it before their `LIMIT`, so a page is never cut short after it.
static VALID_ID: LazyLock<String> = LazyLock::new(|| {
    // `translate` deletes the allowed bytes: plain C code, where a regular expression per row
    // made the id listing 5x slower.
    format!(
        "length(w.id) BETWEEN 1 AND {} AND w.id NOT IN ('.', '..') AND translate(w.id, \
         'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-', '') = ''",
        crate::workspace::MAX_WORKSPACE_ID_LEN
    )
});

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
pub(super) static STATUS: LazyLock<String> = LazyLock::new(|| status_select("$1", ""));

/// The [`STATUS`] statement for the workspace whose id is the SQL expression `ws`, with `extra`
/// columns after the spend columns (`w` is the workspace row, `last.total_cents` the running
/// total at now).
fn status_select(ws: &str, extra: &str) -> String {
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
    WHERE e.workspace_id = {ws} AND e.occurred_at > {NOW} - interval '{secs} seconds' AND e.occurred_at <= {NOW}
    ORDER BY e.occurred_at, e.total_cents LIMIT 1) w{i} ON true"
        );
    }
    format!(
        "SELECT {limits}{columns}{extra}
FROM workspaces w
LEFT JOIN LATERAL ({last}) last ON true{joins}
WHERE w.id = {ws} AND {LIVE}",
        limits = limit_columns(),
        last = last_total(ws),
    )
}

/// `$1` workspace ids, `$2` now or NULL → one [`STATUS`] row per live workspace among them,
/// then `batch_n`, its 1-based position in `$1`: many statuses in one statement.
pub(super) static STATUS_MANY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT s.*, ids.n AS batch_n
FROM unnest($1::TEXT[]) WITH ORDINALITY AS ids(id, n)
CROSS JOIN LATERAL ({}) s",
        status_select("ids.id", "")
    )
});

/// `$1` workspace id, `$2` now or NULL → the [`STATUS`] columns, then `alert_thresholds`, then
/// one `forecast_{period}` and one `release_{period}` column per period (see [`report_select`]).
pub(super) static REPORT: LazyLock<String> = LazyLock::new(|| report_select("$1"));

/// `$1` the id after which the page starts (NULL for the first), `$2` now or NULL, `$3` the page
/// size → one [`REPORT`] row per live workspace of the page, in id order: the listing with
/// status in one round trip.
pub(super) static REPORT_PAGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT r.*
FROM (SELECT w.id FROM workspaces w
      WHERE {LIVE} AND {valid} AND ($1::TEXT IS NULL OR w.id > $1)
      ORDER BY w.id LIMIT $3) page
CROSS JOIN LATERAL ({}) r
ORDER BY r.id",
        report_select("page.id"),
        valid = &*VALID_ID
    )
});

/// The report of the workspace whose id is the SQL expression `ws` (`$2` now or NULL): its id,
/// the [`STATUS`] columns, `alert_thresholds`, then per period
/// - `forecast_{period}`: `exhausted_in_seconds` as `tower_budget::alerts` defines it. Per
///   limited period one pass over the window's ledger entries, oldest first, on the covering
///   index: each stretch between two entries leaving the window is checked with one integer
///   division (`short` cents at `hourly` cents per hour);
/// - `release_{period}`: for a period exceeded with a limit above 0, the time of the first
///   ledger entry whose running total exceeds `total(now) − limit` (as [`RELEASE_TIMES`]): one
///   index probe, only when exceeded.
fn report_select(ws: &str) -> String {
    let mut extra = String::from(
        ",\n       CASE WHEN w.alert_thresholds IS NOT NULL THEN ARRAY(
           SELECT DISTINCT x FROM unnest(w.alert_thresholds) x WHERE x BETWEEN 1 AND 1000 ORDER BY x)
       END AS alert_thresholds,
       COALESCE(last.total_cents, 0) AS last_total, {NOW} AS now, w.id AS id",
    )
    .replace("{NOW}", NOW);
    for p in Period::all() {
        extra += &format!(",\n       tower_budget_limit(w.budget_limits, '{p}') AS \"lim_{p}\"");
    }
    let forecasts: Vec<String> = Period::all()
        .map(|p| {
            let (secs, h) = (p.window().as_secs(), Period::HOURLY);
            format!(
                "CASE WHEN s.\"lim_{p}\" IS NULL THEN NULL
            WHEN s.\"{p}\" >= s.\"lim_{p}\" THEN 0
            WHEN s.\"{h}\" <= 0 THEN NULL
            ELSE (SELECT min(seg.at)::BIGINT FROM (
                SELECT GREATEST(x.start, CASE WHEN x.short <= 0 THEN 0
                                              ELSE div(x.short + s.\"{h}\" - 1, s.\"{h}\") END) AS at,
                       x.stop
                FROM (SELECT y.start, LEAD(y.start, 1, {secs} + 1) OVER (ORDER BY y.ord NULLS FIRST) AS stop,
                             (s.\"lim_{p}\" - y.remaining)::NUMERIC * 3600 AS short
                      FROM (SELECT NULL::BIGINT AS ord, 0::NUMERIC AS start, s.\"{p}\" AS remaining
                            UNION ALL
                            SELECT e.total_cents,
                                   CEIL(EXTRACT(EPOCH FROM e.occurred_at + interval '{secs} seconds' - s.now)),
                                   s.last_total - e.total_cents
                            FROM workspace_spend_events e
                            WHERE e.workspace_id = s.id AND e.occurred_at > s.now - interval '{secs} seconds'
                              AND e.occurred_at <= s.now) y) x) seg
                WHERE seg.at < seg.stop)
       END AS \"forecast_{p}\",
       CASE WHEN s.\"lim_{p}\" > 0 AND s.\"{p}\" >= s.\"lim_{p}\" THEN
           (SELECT e.occurred_at FROM workspace_spend_events e
            WHERE e.workspace_id = s.id AND e.total_cents > s.last_total - s.\"lim_{p}\"
            ORDER BY e.total_cents LIMIT 1)
       END AS \"release_{p}\""
            )
        })
        .collect();
    format!(
        "WITH s AS MATERIALIZED ({})\nSELECT s.*,\n       {}\nFROM s",
        status_select(ws, &extra),
        forecasts.join(",\n       ")
    )
}

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
        last_total("$1")
    )
});

/// The running total of the last ledger entry at or before now of the workspace `ws`.
fn last_total(ws: &str) -> String {
    format!(
        "SELECT e.total_cents FROM workspace_spend_events e
    WHERE e.workspace_id = {ws} AND e.occurred_at <= {NOW}
    ORDER BY e.occurred_at DESC, e.total_cents DESC LIMIT 1"
    )
}

/// `$1` id, `$2` cumulative cents, `$3` seq as text, `$4` now or NULL (the database's clock),
/// `$5` [`PERIOD_NAMES`], `$6` [`PERIOD_WINDOWS`]: the heartbeat decides alerts with the period
/// table it is given.
pub(super) const RECORD_HEARTBEAT: &str =
    "SELECT o_known, o_delta_cents, o_stale FROM tower_budget_record_heartbeat($1, $2, $3::TEXT::NUMERIC, $4, $5::TEXT[], $6::BIGINT[])";

/// The period table's names, in table order, for the SQL functions that take it.
pub(super) static PERIOD_NAMES: LazyLock<Vec<String>> =
    LazyLock::new(|| Period::all().map(|p| p.name().to_owned()).collect());

/// The period table's windows in seconds, in table order.
pub(super) static PERIOD_WINDOWS: LazyLock<Vec<i64>> = LazyLock::new(|| {
    Period::all()
        .map(|p| i64::try_from(p.window().as_secs()).unwrap_or(i64::MAX))
        .collect()
});

/// `$1` id, `$2` now or NULL, `$3` period names, `$4`/`$5` limits before/after, `$6`/`$7`
/// spend before/after: decides the alert events of a change (the caller holds the row lock).
pub(super) const ALERT_STEP: &str = "SELECT tower_budget_alert_step($1, COALESCE($2::TIMESTAMPTZ, now()), $3::TEXT[], $4::BIGINT[], $5::BIGINT[], $6::BIGINT[], $7::BIGINT[])";

/// Locks a live workspace's row and reads its limits (before a change), then the time to read
/// the change at: now, or the workspace's last ledger entry if later — a heartbeat whose
/// transaction began after this one's but took the lock first stamped its entry after this
/// transaction's `now()`, and must count.
pub(super) static LOCK_LIMITS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {}, GREATEST({NOW}, w.spend_last_at) AS at
    FROM workspaces w WHERE w.id = $1 AND {LIVE} FOR UPDATE",
        limit_columns()
    )
});

/// Claims due outbox heads: `$1` how many, `$2` lease in seconds, `$3` now or NULL.
pub(super) const CLAIM_ALERTS: &str = "WITH heads AS (
    SELECT o.workspace_id, o.seq FROM budget_alert_outbox o
    WHERE o.next_attempt_at <= COALESCE($3::TIMESTAMPTZ, now())
      AND (o.leased_until IS NULL OR o.leased_until <= COALESCE($3::TIMESTAMPTZ, now()))
      AND NOT EXISTS (SELECT 1 FROM budget_alert_outbox p
                      WHERE p.workspace_id = o.workspace_id AND p.seq < o.seq)
    ORDER BY o.next_attempt_at, o.seq
    LIMIT $1
    FOR UPDATE SKIP LOCKED)
UPDATE budget_alert_outbox o
SET attempts = LEAST(GREATEST(o.attempts, 0), 2147483646) + 1,
    leased_until = COALESCE($3::TIMESTAMPTZ, now()) + make_interval(secs => $2::FLOAT8)
FROM heads WHERE o.workspace_id = heads.workspace_id AND o.seq = heads.seq
RETURNING o.workspace_id, o.seq, o.id, o.kind, o.period, o.threshold, o.limit_cents,
          o.spend_cents, o.decided_at, o.attempts,
          ARRAY(SELECT x FROM unnest(o.delivered_to) x WHERE x IS NOT NULL) AS delivered_to";

/// An outbox row this version cannot read (written by other software): dropped, not retried.
pub(super) const DROP_ALERT: &str =
    "DELETE FROM budget_alert_outbox WHERE workspace_id = $1 AND seq = $2";

pub(super) const ALERT_DELIVERED: &str =
    "DELETE FROM budget_alert_outbox WHERE workspace_id = $1 AND seq = $2";

/// `$1` workspace, `$2` seq, `$3` the claim's attempts (another claim since: no change), `$4`
/// webhooks that have it, `$5` retry in seconds, `$6` now or NULL. The workspace's later events
/// cannot go before it: they are not due before it either, so the claim does not visit them.
pub(super) const ALERT_FAILED: &str = "WITH head AS (
    UPDATE budget_alert_outbox
    SET delivered_to = $4, leased_until = NULL,
        next_attempt_at = COALESCE($6::TIMESTAMPTZ, now()) + make_interval(secs => $5::FLOAT8)
    WHERE workspace_id = $1 AND seq = $2 AND attempts = $3
    RETURNING next_attempt_at)
UPDATE budget_alert_outbox o SET next_attempt_at = head.next_attempt_at
FROM head
WHERE o.workspace_id = $1 AND o.seq > $2 AND o.next_attempt_at < head.next_attempt_at";

/// `$1` max age in seconds, `$2` now or NULL.
pub(super) const EXPIRE_ALERTS: &str = "DELETE FROM budget_alert_outbox
    WHERE LEAST(created_at, decided_at) < COALESCE($2::TIMESTAMPTZ, now()) - make_interval(secs => $1::FLOAT8)
      AND (leased_until IS NULL OR leased_until <= COALESCE($2::TIMESTAMPTZ, now()))";

/// Live workspaces with a period remembered as exceeded, a page after `$1`.
pub(super) static EXCEEDED_WORKSPACES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT w.id FROM workspaces w
    WHERE w.alert_exceeded IS NOT NULL AND {LIVE} AND ($1::TEXT IS NULL OR w.id > $1)
    ORDER BY w.id LIMIT 1000"
    )
});

/// Locks a workspace for the recovery sweep, unless a writer holds it (that writer decides),
/// and reads the time to read it at (see [`LOCK_LIMITS`]).
pub(super) static LOCK_EXCEEDED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT GREATEST({NOW}, w.spend_last_at) FROM workspaces w
    WHERE w.id = $1 AND w.alert_exceeded IS NOT NULL AND {LIVE}
    FOR UPDATE SKIP LOCKED"
    )
});

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
/// they were; a stored value that is not an object is replaced. With `$4` true the alert
/// thresholds become `$5` (NULL: the default). Returns the limits after it.
pub(super) static PATCH_LIMITS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE workspaces w SET budget_limits =
        (CASE WHEN jsonb_typeof(w.budget_limits) = 'object' THEN w.budget_limits ELSE '{{}}'::JSONB END
         - $2::TEXT[]) || $3::JSONB,
        alert_thresholds = CASE WHEN $4::BOOLEAN THEN $5::SMALLINT[] ELSE w.alert_thresholds END
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
    WHERE {LIVE} AND {valid} AND ($1::TEXT IS NULL OR w.id > $1)
    ORDER BY w.id LIMIT $2",
        valid = &*VALID_ID
    )
});

/// `$1` workspace id, `$2` the first bucket's start, `$3` the step in seconds, `$4` how many
/// buckets → one row per bucket edge (`buckets + 1`), each the running total before it: one
/// index probe per edge, plus one for the total before the oldest kept entry. No row when the
/// workspace is unknown or removed.
pub(super) static HISTORY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT COALESCE(
           (SELECT e.total_cents FROM workspace_spend_events e
             WHERE e.workspace_id = $1 AND e.occurred_at < g.edge
             ORDER BY e.occurred_at DESC, e.total_cents DESC LIMIT 1),
           (SELECT e.total_cents - e.delta_cents FROM workspace_spend_events e
             WHERE e.workspace_id = $1 ORDER BY e.total_cents LIMIT 1),
           0)
    FROM workspaces w,
         generate_series(0, $4::INTEGER) i,
         LATERAL (SELECT $2::TIMESTAMPTZ + make_interval(secs => $3::FLOAT8 * i) AS edge) g
    WHERE w.id = $1 AND {LIVE}
    ORDER BY i"
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
            assert!(REPORT.contains(&format!("AS \"forecast_{p}\"")));
            assert!(REPORT.contains(&format!("AS \"lim_{p}\"")));
            assert!(REPORT.contains(&format!("AS \"release_{p}\"")));
            assert!(REPORT_PAGE.contains(&format!("AS \"release_{p}\"")));
        }
    }
}
