-- tower-budget V4: a notification per changed workspace, so that every replica drops its cached
-- answers for that workspace within milliseconds instead of waiting for its cache TTL.
--
-- A trigger on `workspaces` covers every write path — the crate's statements, the heartbeat
-- function, and any other software that writes the table — and `pg_notify` is transactional:
-- the notification is delivered only when the writing transaction commits, and identical
-- notifications of one transaction are delivered once.
--
-- Channel `tower_budget`, payload `<kind>:<workspace id>`:
--   budget  limits or recorded spend changed (a PATCH, a heartbeat that added to the ledger);
--   agent   the registration changed: agent URL, token (rotation), removal, a new or deleted row.
-- A heartbeat that records nothing (a repeated report, a stale seq) sends nothing.

CREATE OR REPLACE FUNCTION tower_budget_notify_change()
RETURNS TRIGGER
LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('tower_budget', 'agent:' || NEW.id);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tower_budget', 'agent:' || OLD.id);
    ELSIF NEW.id IS DISTINCT FROM OLD.id
       OR NEW.agent_url IS DISTINCT FROM OLD.agent_url
       OR NEW.token_hash IS DISTINCT FROM OLD.token_hash
       OR NEW.removed_at IS DISTINCT FROM OLD.removed_at
       OR NEW.status IS DISTINCT FROM OLD.status THEN
        PERFORM pg_notify('tower_budget', 'agent:' || OLD.id);
        PERFORM pg_notify('tower_budget', 'agent:' || NEW.id);
    ELSIF NEW.budget_limits IS DISTINCT FROM OLD.budget_limits
       OR NEW.budget_limit IS DISTINCT FROM OLD.budget_limit
       OR NEW.spend_total_cents IS DISTINCT FROM OLD.spend_total_cents
       OR NEW.spend_last_at IS DISTINCT FROM OLD.spend_last_at THEN
        PERFORM pg_notify('tower_budget', 'budget:' || NEW.id);
    END IF;
    RETURN NULL;
END
$fn$;

DROP TRIGGER IF EXISTS tower_budget_notify_change ON workspaces;
CREATE TRIGGER tower_budget_notify_change
    AFTER INSERT OR UPDATE OR DELETE ON workspaces
    FOR EACH ROW EXECUTE FUNCTION tower_budget_notify_change();
