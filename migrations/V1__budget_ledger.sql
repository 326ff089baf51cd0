-- tower-budget V1: per-period limits and the spend ledger.
--
-- Applies to an empty database and to one that already has the seed's
-- workspaces(id, status, budget_limit, monthly_spend) table with rows.
-- Every table is keyed by workspace id first, so it can be distributed by workspace (Citus).

CREATE TABLE IF NOT EXISTS workspaces (
    id            TEXT PRIMARY KEY,
    status        TEXT,
    budget_limit  BIGINT,
    monthly_spend BIGINT
);

ALTER TABLE workspaces
    -- Canonical limits: {"hourly": 100, "monthly": 2000}; cents; absent/null = no limit.
    ADD COLUMN IF NOT EXISTS budget_limits     JSONB,
    -- Last accepted heartbeat seq (u64, hence NUMERIC). monthly_spend keeps its seed meaning:
    -- the agent's last cumulative report, which the next heartbeat's delta is derived from.
    ADD COLUMN IF NOT EXISTS spend_seq         NUMERIC(20, 0),
    -- Running ledger total and the time of the last ledger entry (entries are appended in time order).
    ADD COLUMN IF NOT EXISTS spend_total_cents BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS spend_last_at     TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS removed_at        TIMESTAMPTZ;

-- Backfill the monthly limit from the legacy single budget_limit where not already set.
UPDATE workspaces
SET budget_limits = jsonb_set(
        CASE WHEN jsonb_typeof(budget_limits) = 'object' THEN budget_limits ELSE '{}'::jsonb END,
        '{monthly}', to_jsonb(budget_limit))
WHERE budget_limit IS NOT NULL
  AND budget_limit >= 0
  AND COALESCE(jsonb_typeof(budget_limits -> 'monthly'), 'null') = 'null';

-- The ledger: one row per recorded increment, with the workspace's running total after it.
-- Spend in (a, b] = total of the last row at or before b - total before the first row after a.
CREATE TABLE IF NOT EXISTS workspace_spend_events (
    workspace_id TEXT        NOT NULL,
    occurred_at  TIMESTAMPTZ NOT NULL,
    delta_cents  BIGINT      NOT NULL CHECK (delta_cents > 0),
    total_cents  BIGINT      NOT NULL,
    PRIMARY KEY (workspace_id, total_cents)
);

-- Window edges: "last row at or before t" / "first row after t", index-only.
CREATE INDEX IF NOT EXISTS workspace_spend_events_by_time
    ON workspace_spend_events (workspace_id, occurred_at, total_cents) INCLUDE (delta_cents);

-- One heartbeat, atomically: the row lock serialises reports for one workspace, so two
-- concurrent reports never both count the same increment.
CREATE OR REPLACE FUNCTION tower_budget_record_heartbeat(
    p_workspace_id TEXT,
    p_reported     BIGINT,       -- cumulative cents, already clamped; 0 = nothing to report
    p_seq          NUMERIC,      -- NULL when the agent sends none
    p_at           TIMESTAMPTZ)
RETURNS TABLE (o_known BOOLEAN, o_delta_cents BIGINT, o_stale BOOLEAN)
LANGUAGE plpgsql AS $fn$
DECLARE
    w       RECORD;
    v_delta BIGINT := 0;
    v_at    TIMESTAMPTZ;
BEGIN
    SELECT GREATEST(COALESCE(ws.monthly_spend, 0), 0) AS previous,
           ws.spend_seq, ws.spend_total_cents, ws.spend_last_at
      INTO w
      FROM workspaces ws
     WHERE ws.id = p_workspace_id AND ws.removed_at IS NULL
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, 0::BIGINT, false;
        RETURN;
    END IF;

    IF p_seq IS NOT NULL AND w.spend_seq IS NOT NULL AND p_seq <= w.spend_seq THEN
        RETURN QUERY SELECT true, 0::BIGINT, true;
        RETURN;
    END IF;

    -- Reset-aware delta (same rule as tower_budget::store::derive_delta).
    IF p_reported > 0 THEN
        v_delta := CASE WHEN p_reported < w.previous THEN p_reported
                        ELSE p_reported - w.previous END;
    END IF;

    IF v_delta > 0 THEN
        -- Entries stay in time order even if clocks disagree a little.
        v_at := GREATEST(p_at, w.spend_last_at);
        INSERT INTO workspace_spend_events (workspace_id, occurred_at, delta_cents, total_cents)
        VALUES (p_workspace_id, v_at, v_delta, w.spend_total_cents + v_delta);
    END IF;

    IF v_delta > 0 OR p_seq IS NOT NULL THEN
        UPDATE workspaces
           SET monthly_spend     = CASE WHEN p_reported > 0 THEN p_reported ELSE monthly_spend END,
               spend_seq         = COALESCE(p_seq, spend_seq),
               spend_total_cents = spend_total_cents + v_delta,
               spend_last_at     = COALESCE(v_at, spend_last_at)
         WHERE id = p_workspace_id;
    END IF;

    RETURN QUERY SELECT true, v_delta, false;
END
$fn$;
