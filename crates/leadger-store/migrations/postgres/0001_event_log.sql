-- The append-only event log. Positions are assigned by the writer under one
-- database-wide advisory lock, so they are contiguous and in commit order.
-- event_id is a UUIDv7 made by the writer (unique by construction; not
-- indexed, to keep appends cheap). Payloads are `json`: stored as written.
CREATE TABLE events (
    position        BIGINT PRIMARY KEY,
    event_id        UUID NOT NULL,
    stream_id       UUID NOT NULL,
    version         BIGINT NOT NULL,
    event_type      TEXT NOT NULL,
    schema_version  INTEGER NOT NULL,
    payload         JSON NOT NULL,
    metadata        JSON NOT NULL,
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
-- FindLeads searches. Rebuildable from the log (but for the data key).
-- Only columns that never change are indexed, so the update each command
-- makes is a HOT update (fillfactor leaves room on the page for it).
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
    external_ref      TEXT UNIQUE,
    -- The lead's data key, wrapped by the key-encryption key. Setting it to
    -- NULL erases the lead's personal data from every event that holds it.
    wrapped_key       TEXT
) WITH (fillfactor = 80);
CREATE INDEX leads_email_index ON leads (email_index);

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
