-- tower-budget V4: a notification per changed workspace, so that every replica drops its cached
-- answers for that workspace within milliseconds instead of waiting for its cache TTL.
--
-- A trigger on `workspaces` covers every write path — the crate's statements, the heartbeat
-- function, and any other software that writes the table — and `pg_notify` is transactional:
-- the notification is delivered only when the writing transaction commits, and identical
-- notifications of one transaction are delivered once.
--
-- Channel `tower_budget`, payload `<kind>:<workspace id>`:
--   budget  limits or recorded spend changed (a PATCH, a heartbeat that added to the ledger), or
--           any other column but the agent's last report and seq;
--   agent   the registration changed: agent URL, token (rotation), removal, a new or deleted row;
--   all:    a TRUNCATE, or an id too long for a payload: every replica drops its whole cache.
-- A heartbeat that records nothing (a repeated report, a stale seq) sends nothing.

CREATE OR REPLACE FUNCTION tower_budget_notify_change()
RETURNS TRIGGER
LANGUAGE plpgsql AS $fn$
DECLARE
    v_kind TEXT;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('tower_budget', 'all:');
        RETURN NULL;
    ELSIF TG_OP = 'INSERT' OR TG_OP = 'DELETE' THEN
        v_kind := 'agent';
    ELSIF NEW.id IS DISTINCT FROM OLD.id
       OR NEW.agent_url IS DISTINCT FROM OLD.agent_url
       OR NEW.token_hash IS DISTINCT FROM OLD.token_hash
       OR NEW.removed_at IS DISTINCT FROM OLD.removed_at
       OR NEW.status IS DISTINCT FROM OLD.status THEN
        v_kind := 'agent';
    -- Anything else but the agent's last report and seq (which a heartbeat that records nothing
    -- updates) can change a decision: limits, recorded spend, and columns added later.
    ELSIF to_jsonb(NEW) - 'monthly_spend' - 'spend_seq'
          IS DISTINCT FROM to_jsonb(OLD) - 'monthly_spend' - 'spend_seq' THEN
        v_kind := 'budget';
    ELSE
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        PERFORM tower_budget_notify(v_kind, OLD.id);
    END IF;
    IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.id IS DISTINCT FROM OLD.id) THEN
        PERFORM tower_budget_notify(v_kind, NEW.id);
    END IF;
    RETURN NULL;
END
$fn$;

-- A payload is at most 8,000 bytes: an id too long to name is announced as "everything".
CREATE OR REPLACE FUNCTION tower_budget_notify(p_kind TEXT, p_id TEXT)
RETURNS VOID
LANGUAGE sql AS $fn$
    SELECT pg_notify('tower_budget',
        CASE WHEN octet_length(p_id) > 7000 THEN 'all:' ELSE p_kind || ':' || p_id END);
$fn$;

DROP TRIGGER IF EXISTS tower_budget_notify_change ON workspaces;
CREATE TRIGGER tower_budget_notify_change
    AFTER INSERT OR UPDATE OR DELETE ON workspaces
    FOR EACH ROW EXECUTE FUNCTION tower_budget_notify_change();
DROP TRIGGER IF EXISTS tower_budget_notify_truncate ON workspaces;
CREATE TRIGGER tower_budget_notify_truncate
    AFTER TRUNCATE ON workspaces
    FOR EACH STATEMENT EXECUTE FUNCTION tower_budget_notify_change();
