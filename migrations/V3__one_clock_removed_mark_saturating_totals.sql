-- tower-budget V3: the database's clock for the ledger, the seed's `status = 'removed'` mark
-- honoured, and running totals that never overflow.
--
-- The heartbeat function keeps its signature, so replicas still running the previous version
-- keep working during a rolling upgrade; `p_at` NULL (what PgStore sends unless a test injects a
-- clock) stamps the entry with the database server's clock, the one clock that every replica
-- shares, and a `p_at` later than that clock is taken as the database's now.

CREATE OR REPLACE FUNCTION tower_budget_record_heartbeat(
    p_workspace_id TEXT,
    p_reported     BIGINT,       -- cumulative cents, already clamped; 0 = nothing to report
    p_seq          NUMERIC,      -- NULL when the agent sends none
    p_at           TIMESTAMPTZ)  -- NULL: the database's now()
RETURNS TABLE (o_known BOOLEAN, o_delta_cents BIGINT, o_stale BOOLEAN)
LANGUAGE plpgsql AS $fn$
DECLARE
    w       RECORD;
    v_delta BIGINT := 0;
    v_at    TIMESTAMPTZ;
    v_total BIGINT;
    v_base  BIGINT;
    c_max   CONSTANT BIGINT := 9223372036854775807;
BEGIN
    SELECT GREATEST(COALESCE(ws.monthly_spend, 0), 0) AS previous,
           ws.spend_seq, ws.spend_total_cents, ws.spend_last_at
      INTO w
      FROM workspaces ws
     WHERE ws.id = p_workspace_id
       AND ws.removed_at IS NULL AND ws.status IS DISTINCT FROM 'removed'
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, 0::BIGINT, false;
        RETURN;
    END IF;

    IF p_seq IS NOT NULL AND w.spend_seq IS NOT NULL AND p_seq <= w.spend_seq THEN
        RETURN QUERY SELECT true, 0::BIGINT, true;
        RETURN;
    END IF;

    -- Reset-aware delta (same rule as the in-process store).
    IF p_reported > 0 THEN
        v_delta := CASE WHEN p_reported < w.previous THEN p_reported
                        ELSE p_reported - w.previous END;
    END IF;
    v_total := w.spend_total_cents;

    IF v_delta > 0 AND v_total > c_max - v_delta THEN
        -- The running total would pass i64. Totals are only ever subtracted from each other,
        -- so shift them all down by the total before the oldest kept entry (0 when none is
        -- kept). Two steps through negative values keep the primary key unique row by row.
        -- The oldest kept entry has the smallest total: one probe on the primary key.
        v_base := COALESCE(
            (SELECT e.total_cents - e.delta_cents FROM workspace_spend_events e
              WHERE e.workspace_id = p_workspace_id ORDER BY e.total_cents LIMIT 1),
            v_total);
        IF v_base > 0 THEN
            UPDATE workspace_spend_events SET total_cents = -(total_cents - v_base) - 1
             WHERE workspace_id = p_workspace_id;
            UPDATE workspace_spend_events SET total_cents = -total_cents - 1
             WHERE workspace_id = p_workspace_id;
            v_total := v_total - v_base;
        END IF;
        -- What the kept entries already hold cannot be shifted away: spend saturates.
        v_delta := LEAST(v_delta, c_max - v_total);
    END IF;

    IF v_delta > 0 THEN
        -- Entries stay in time order even if the clock steps back. A time handed in (a test's
        -- clock, or a replica still on the V1 code that sends its own) is never later than the
        -- database's: a fast clock cannot stamp spend into the future.
        v_at := GREATEST(LEAST(COALESCE(p_at, now()), now()), w.spend_last_at);
        v_total := v_total + v_delta;
        INSERT INTO workspace_spend_events (workspace_id, occurred_at, delta_cents, total_cents)
        VALUES (p_workspace_id, v_at, v_delta, v_total);
    END IF;

    IF v_total <> w.spend_total_cents OR p_seq IS NOT NULL
       OR (p_reported > 0 AND p_reported <> w.previous) THEN
        UPDATE workspaces
           SET monthly_spend     = CASE WHEN p_reported > 0 THEN p_reported ELSE monthly_spend END,
               spend_seq         = COALESCE(p_seq, spend_seq),
               spend_total_cents = v_total,
               spend_last_at     = COALESCE(v_at, spend_last_at)
         WHERE id = p_workspace_id;
    END IF;

    RETURN QUERY SELECT true, v_delta, false;
END
$fn$;
