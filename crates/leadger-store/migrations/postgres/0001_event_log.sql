-- The append-only event log. Positions are assigned by the writer under one
-- database-wide advisory lock, so they are contiguous and in commit order.
CREATE TABLE events (
    position        BIGINT PRIMARY KEY,
    event_id        UUID NOT NULL UNIQUE,
    stream_id       UUID NOT NULL,
    version         BIGINT NOT NULL,
    event_type      TEXT NOT NULL,
    schema_version  INTEGER NOT NULL,
    payload         JSONB NOT NULL,
    metadata        JSONB NOT NULL,
    occurred_at_us  BIGINT NOT NULL,
    recorded_at_us  BIGINT NOT NULL,
    UNIQUE (stream_id, version)
);

CREATE FUNCTION events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only';
END $$;

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();

-- The current state of each lead: what the writer decides on, and what
-- FindLeads searches. Rebuildable from the log.
CREATE TABLE leads (
    lead_id           UUID PRIMARY KEY,
    stage             TEXT NOT NULL,
    version           BIGINT NOT NULL,
    seen_by_sales     BOOLEAN NOT NULL,
    last_occurred_at_us BIGINT NOT NULL,
    assignee          TEXT,
    owner             TEXT,
    -- HMAC of the normalized email: matches a person without storing the address.
    email_index       TEXT NOT NULL,
    external_ref      TEXT UNIQUE
);
CREATE INDEX leads_email_index ON leads (email_index);
CREATE INDEX leads_stage ON leads (stage, lead_id);
CREATE INDEX leads_assignee ON leads (assignee, lead_id);
CREATE INDEX leads_owner ON leads (owner, lead_id);

-- Per-lead data keys, wrapped by the key-encryption key. Deleting a row
-- erases the lead's personal data from every event that holds it.
CREATE TABLE lead_keys (
    lead_id      UUID PRIMARY KEY,
    wrapped_key  TEXT NOT NULL
);

-- Idempotency receipts (AIP-155): the response to a successful command.
CREATE TABLE receipts (
    client_id      TEXT NOT NULL,
    request_id     TEXT NOT NULL,
    request_hash   TEXT NOT NULL,
    lead_id        UUID NOT NULL,
    version        BIGINT NOT NULL,
    position       BIGINT NOT NULL,
    stage          TEXT NOT NULL,
    created_at_us  BIGINT NOT NULL,
    PRIMARY KEY (client_id, request_id)
);
CREATE INDEX receipts_created ON receipts (created_at_us);
