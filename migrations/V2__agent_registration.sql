-- tower-budget V2: where each workspace's agent listens, and the hash of its bearer token.

ALTER TABLE workspaces
    ADD COLUMN IF NOT EXISTS agent_url  TEXT,
    -- SHA-256 of the workspace token; the token itself is never stored.
    ADD COLUMN IF NOT EXISTS token_hash BYTEA;

-- Token → workspace, for authenticating API calls. (On Citus a unique index must include the
-- distribution column: move this mapping to its own table distributed by token_hash.)
CREATE UNIQUE INDEX IF NOT EXISTS workspaces_token_hash
    ON workspaces (token_hash) WHERE token_hash IS NOT NULL;
