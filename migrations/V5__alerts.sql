-- tower-budget V5: alert thresholds, alert events decided where the spend is recorded or the
-- limit changed, and the outbox they wait in until delivered (SPEC §12).
--
-- The rule is the one of `tower_budget::alerts::decide` (the in-process store runs it in Rust):
-- a threshold t of a period with limit L is reached when spend * 100 >= t * L; a change compares
-- the state before it with the state after it, both read under the workspace's row lock, so
-- concurrent heartbeats on any number of replicas decide each crossing exactly once.

ALTER TABLE workspaces
    -- Percentages of each limit; NULL = the default {80,100}.
    ADD COLUMN IF NOT EXISTS alert_thresholds SMALLINT[],
    -- Periods exceeded when alerts were last decided (for budget.recovered); NULL = none.
    ADD COLUMN IF NOT EXISTS alert_exceeded   TEXT[],
    -- While the running total is below this, no threshold can be reached (see the heartbeat);
    -- NULL = unknown. Reset whenever limits or thresholds change, by whatever software.
    ADD COLUMN IF NOT EXISTS alert_below      BIGINT;

-- Limits or thresholds written (by the crate or by other software): the bound no longer holds.
-- Fires only for UPDATEs that name those columns, so heartbeats do not pay for it.
CREATE OR REPLACE FUNCTION tower_budget_reset_alert_below()
RETURNS TRIGGER
LANGUAGE plpgsql AS $fn$
BEGIN
    IF NEW.budget_limits IS DISTINCT FROM OLD.budget_limits
       OR NEW.alert_thresholds IS DISTINCT FROM OLD.alert_thresholds THEN
        NEW.alert_below := NULL;
    END IF;
    RETURN NEW;
END
$fn$;
DROP TRIGGER IF EXISTS tower_budget_reset_alert_below ON workspaces;
CREATE TRIGGER tower_budget_reset_alert_below
    BEFORE UPDATE OF budget_limits, alert_thresholds ON workspaces
    FOR EACH ROW EXECUTE FUNCTION tower_budget_reset_alert_below();

-- The recovery sweep visits only workspaces with an exceeded period.
CREATE INDEX IF NOT EXISTS workspaces_alert_exceeded
    ON workspaces (id) WHERE alert_exceeded IS NOT NULL;

-- Events wait here until every webhook has them. Keyed by workspace first (SPEC §10); `seq`
-- orders a workspace's events (they are decided under its row lock, so in commit order).
CREATE TABLE IF NOT EXISTS budget_alert_outbox (
    workspace_id    TEXT        NOT NULL,
    seq             BIGINT      GENERATED ALWAYS AS IDENTITY,
    id              TEXT        NOT NULL,
    kind            TEXT        NOT NULL,
    period          TEXT        NOT NULL,
    threshold       INTEGER     NOT NULL,
    limit_cents     BIGINT,
    spend_cents     BIGINT      NOT NULL,
    decided_at      TIMESTAMPTZ NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    leased_until    TIMESTAMPTZ,
    -- Webhooks that already answered 2xx.
    delivered_to    TEXT[]      NOT NULL DEFAULT '{}',
    PRIMARY KEY (workspace_id, seq)
);
CREATE INDEX IF NOT EXISTS budget_alert_outbox_due ON budget_alert_outbox (next_attempt_at);
CREATE INDEX IF NOT EXISTS budget_alert_outbox_age
    ON budget_alert_outbox (LEAST(created_at, decided_at));

-- A stored limit read the way `Limits::from_stored_numbers` reads it: a JSON number whose text
-- is an integer within i64 and >= 0, else no limit. Never fails.
CREATE OR REPLACE FUNCTION tower_budget_limit(p_limits JSONB, p_period TEXT)
RETURNS BIGINT
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT CASE WHEN jsonb_typeof(p_limits -> p_period) = 'number'
                 AND (p_limits ->> p_period) ~ '^-?[0-9]{1,19}$' THEN
               CASE WHEN (p_limits ->> p_period)::NUMERIC BETWEEN 0 AND 9223372036854775807
                    THEN (p_limits ->> p_period)::NUMERIC::BIGINT END
           END
$fn$;

CREATE OR REPLACE FUNCTION tower_budget_alert_event(
    p_workspace_id TEXT, p_at TIMESTAMPTZ, p_kind TEXT, p_period TEXT, p_threshold INTEGER,
    p_limit BIGINT, p_spend BIGINT)
RETURNS VOID
LANGUAGE sql AS $fn$
    INSERT INTO budget_alert_outbox (workspace_id, id, kind, period, threshold, limit_cents,
                                     spend_cents, decided_at, created_at, next_attempt_at)
    VALUES (p_workspace_id, gen_random_uuid()::TEXT, p_kind, p_period, p_threshold, p_limit,
            p_spend, p_at, p_at, p_at);
$fn$;

-- Decides the events of one change of a workspace's budget; the caller holds the row lock.
-- Per period (arrays in period-table order): the limit and spend before and after the change.
-- Returns how many events were decided.
CREATE OR REPLACE FUNCTION tower_budget_alert_step(
    p_workspace_id TEXT,
    p_at           TIMESTAMPTZ,
    p_periods      TEXT[],
    p_old          BIGINT[],
    p_new          BIGINT[],
    p_before       BIGINT[],
    p_after        BIGINT[])
RETURNS INTEGER
LANGUAGE plpgsql AS $fn$
DECLARE
    v_thresholds SMALLINT[];
    v_was        TEXT[];
    v_now        TEXT[] := '{}';
    v_quiet      BOOLEAN;
    v_ex         BOOLEAN;
    v_events     INTEGER := 0;
    v_t          SMALLINT;
    i            INTEGER;
BEGIN
    SELECT w.alert_thresholds, COALESCE(w.alert_exceeded, '{}')
      INTO v_thresholds, v_was
      FROM workspaces w WHERE w.id = p_workspace_id;
    -- Read the way `AlertThresholds::from_stored` reads them.
    v_thresholds := CASE WHEN v_thresholds IS NULL THEN '{80,100}'::SMALLINT[] ELSE
        ARRAY(SELECT DISTINCT x FROM unnest(v_thresholds) x WHERE x BETWEEN 1 AND 1000 ORDER BY x)
        END;
    v_quiet := cardinality(v_thresholds) = 0;
    FOR i IN 1 .. cardinality(p_periods) LOOP
        v_ex := p_periods[i] = ANY (v_was);
        -- Remembered as exceeded but not so just before this change: its spend aged out.
        IF v_ex AND NOT COALESCE(p_before[i] >= p_old[i], false) THEN
            IF NOT v_quiet THEN
                PERFORM tower_budget_alert_event(p_workspace_id, p_at, 'budget.recovered',
                    p_periods[i], 100, p_old[i], p_before[i]);
                v_events := v_events + 1;
            END IF;
            v_ex := false;
        END IF;
        IF p_new[i] IS NOT NULL THEN
            FOREACH v_t IN ARRAY v_thresholds LOOP
                IF p_after[i]::NUMERIC * 100 >= v_t::NUMERIC * p_new[i]
                   AND NOT COALESCE(p_before[i]::NUMERIC * 100 >= v_t::NUMERIC * p_old[i], false)
                THEN
                    PERFORM tower_budget_alert_event(p_workspace_id, p_at,
                        'budget.threshold_crossed', p_periods[i], v_t, p_new[i], p_after[i]);
                    v_events := v_events + 1;
                END IF;
            END LOOP;
        END IF;
        IF COALESCE(p_after[i] >= p_new[i], false) THEN
            v_now := v_now || p_periods[i];
        ELSIF v_ex AND NOT v_quiet THEN
            PERFORM tower_budget_alert_event(p_workspace_id, p_at, 'budget.recovered',
                p_periods[i], 100, p_new[i], p_after[i]);
            v_events := v_events + 1;
        END IF;
    END LOOP;
    -- Periods only a newer version knows keep their mark.
    v_now := v_now || ARRAY(SELECT x FROM unnest(v_was) x WHERE x <> ALL (p_periods));
    -- A decision that changed something moves the workspace's clock floor to its time, so that
    -- a writer whose transaction began earlier but takes the lock later (a heartbeat group that
    -- waited on other rows, an older PATCH) decides at this time or later, never before it.
    IF v_events > 0 OR ARRAY(SELECT x FROM unnest(v_now) x ORDER BY x)
       IS DISTINCT FROM ARRAY(SELECT x FROM unnest(v_was) x ORDER BY x) THEN
        UPDATE workspaces
           SET alert_exceeded = NULLIF(v_now, '{}'),
               spend_last_at  = GREATEST(spend_last_at, p_at)
         WHERE id = p_workspace_id;
    END IF;
    RETURN v_events;
END
$fn$;

-- The heartbeat of V3 plus the alert step, given the period table (names and windows in
-- seconds, in table order) by the caller. The four-argument version stays for replicas still
-- running the previous release during a rolling upgrade (they record spend without alerts).
CREATE OR REPLACE FUNCTION tower_budget_record_heartbeat(
    p_workspace_id TEXT,
    p_reported     BIGINT,
    p_seq          NUMERIC,
    p_at           TIMESTAMPTZ,
    p_periods      TEXT[],
    p_windows      BIGINT[])
RETURNS TABLE (o_known BOOLEAN, o_delta_cents BIGINT, o_stale BOOLEAN)
LANGUAGE plpgsql AS $fn$
DECLARE
    w        RECORD;
    v_delta  BIGINT := 0;
    v_at     TIMESTAMPTZ;
    v_total  BIGINT;
    v_base   BIGINT;
    v_limits BIGINT[];
    v_before BIGINT[];
    v_after  BIGINT[];
    v_watch  BOOLEAN;
    v_long   INTEGER;
    v_upper  BIGINT;
    v_tmin   INTEGER;
    v_below  BIGINT;
    i        INTEGER;
    c_max    CONSTANT BIGINT := 9223372036854775807;
BEGIN
    SELECT GREATEST(COALESCE(ws.monthly_spend, 0), 0) AS previous,
           ws.spend_seq, ws.spend_total_cents, ws.spend_last_at, ws.budget_limits,
           ws.alert_thresholds, ws.alert_exceeded, ws.alert_below
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

    IF p_reported > 0 THEN
        v_delta := CASE WHEN p_reported < w.previous THEN p_reported
                        ELSE p_reported - w.previous END;
    END IF;
    v_total := w.spend_total_cents;

    IF v_delta > 0 AND v_total > c_max - v_delta THEN
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
        v_delta := LEAST(v_delta, c_max - v_total);
    END IF;

    IF v_delta > 0 THEN
        v_at := GREATEST(LEAST(COALESCE(p_at, now()), now()), w.spend_last_at);
        v_total := v_total + v_delta;
        INSERT INTO workspace_spend_events (workspace_id, occurred_at, delta_cents, total_cents)
        VALUES (p_workspace_id, v_at, v_delta, v_total);

        -- Alerts, at the entry's time (no entry is later than it). Workspaces without limits
        -- and without a remembered exceeded period skip them. The windows are nested (all end
        -- at v_at), so the spend of the longest limited window bounds every shorter one: while
        -- it is under the lowest threshold of every limit and nothing is remembered as
        -- exceeded, nothing can fire. And since the total before that window's first entry
        -- only grows with time, that stays true while the running total is below
        -- `alert_below` = (that total) + ceil(min over limits of threshold x limit / 100): the
        -- usual heartbeat compares two numbers, and one index probe renews the bound.
        v_watch := w.alert_exceeded IS NOT NULL;
        v_below := CASE WHEN v_base > 0 THEN NULL ELSE w.alert_below END;  -- totals shifted
        IF NOT v_watch AND v_below IS NOT NULL AND v_total < v_below THEN
            NULL;  -- nothing can fire
        ELSIF v_watch
           OR (jsonb_typeof(w.budget_limits) = 'object' AND w.budget_limits <> '{}'::JSONB) THEN
            v_below := NULL;
            -- One query: the limits, the longest limited window, its spend after this entry,
            -- and the lowest threshold (100 stands for the exceeded mark, kept even when the
            -- list is empty).
            SELECT x.lims, x.longest,
                   v_total - COALESCE(
                       (SELECT e.total_cents - e.delta_cents FROM workspace_spend_events e
                         WHERE e.workspace_id = p_workspace_id
                           AND e.occurred_at > v_at - make_interval(secs => p_windows[x.longest])
                         ORDER BY e.occurred_at, e.total_cents LIMIT 1),
                       v_total),
                   CASE WHEN w.alert_thresholds IS NULL THEN 80 ELSE LEAST(100, COALESCE(
                       (SELECT min(t) FROM unnest(w.alert_thresholds) t WHERE t BETWEEN 1 AND 1000),
                       100)) END
              INTO v_limits, v_long, v_upper, v_tmin
              FROM (SELECT array_agg(l.lim ORDER BY l.o) AS lims,
                           (array_agg(l.o ORDER BY p_windows[l.o] DESC)
                              FILTER (WHERE l.lim IS NOT NULL))[1] AS longest
                      FROM (SELECT o, tower_budget_limit(w.budget_limits, p_periods[o]) AS lim
                              FROM generate_subscripts(p_periods, 1) o) l) x;
            IF NOT v_watch AND v_long IS NOT NULL THEN
                FOR i IN 1 .. cardinality(p_periods) LOOP
                    IF v_limits[i] IS NOT NULL
                       AND v_upper::NUMERIC * 100 >= v_tmin::NUMERIC * v_limits[i] THEN
                        v_watch := true;
                        EXIT;
                    END IF;
                END LOOP;
                IF NOT v_watch THEN
                    v_below := LEAST(9223372036854775807::NUMERIC,
                        (v_total - v_upper)::NUMERIC + ceil((SELECT min(v_tmin::NUMERIC * l)
                            FROM unnest(v_limits) l WHERE l IS NOT NULL) / 100))::BIGINT;
                END IF;
            END IF;
        END IF;
        IF v_watch THEN
            v_before := '{}';
            v_after := '{}';
            FOR i IN 1 .. cardinality(p_periods) LOOP
                IF v_limits[i] IS NOT NULL OR p_periods[i] = ANY (w.alert_exceeded) THEN
                    v_after[i] := v_total - COALESCE(
                        (SELECT e.total_cents - e.delta_cents FROM workspace_spend_events e
                          WHERE e.workspace_id = p_workspace_id
                            AND e.occurred_at > v_at - make_interval(secs => p_windows[i])
                          ORDER BY e.occurred_at, e.total_cents LIMIT 1),
                        v_total);
                ELSE
                    v_after[i] := v_delta;
                END IF;
                v_before[i] := v_after[i] - v_delta;
            END LOOP;
            PERFORM tower_budget_alert_step(p_workspace_id, v_at, p_periods, v_limits, v_limits,
                                            v_before, v_after);
        END IF;
    END IF;

    IF v_total <> w.spend_total_cents OR p_seq IS NOT NULL
       OR (p_reported > 0 AND p_reported <> w.previous) THEN
        UPDATE workspaces
           SET monthly_spend     = CASE WHEN p_reported > 0 THEN p_reported ELSE monthly_spend END,
               spend_seq         = COALESCE(p_seq, spend_seq),
               spend_total_cents = v_total,
               spend_last_at     = COALESCE(v_at, spend_last_at),
               alert_below       = CASE WHEN v_delta > 0 THEN v_below ELSE alert_below END
         WHERE id = p_workspace_id;
    END IF;

    RETURN QUERY SELECT true, v_delta, false;
END
$fn$;
