-- The append-only event log. Positions are assigned by the writer inside a
-- BEGIN IMMEDIATE transaction (SQLite's database-wide write lock), so they are
-- contiguous and in commit order.
CREATE TABLE events (
    position        INTEGER PRIMARY KEY,
    event_id        TEXT NOT NULL,
    stream_id       TEXT NOT NULL,
    version         INTEGER NOT NULL,
    event_type      TEXT NOT NULL,
    schema_version  INTEGER NOT NULL,
    payload         TEXT NOT NULL,
    metadata        TEXT NOT NULL,
    occurred_at_us  INTEGER NOT NULL,
    recorded_at_us  INTEGER NOT NULL,
    UNIQUE (stream_id, version)
);

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;

CREATE TABLE leads (
    lead_id           TEXT PRIMARY KEY,
    stage             TEXT NOT NULL,
    version           INTEGER NOT NULL,
    seen_by_sales     INTEGER NOT NULL,
    last_occurred_at_us INTEGER NOT NULL,
    assignee          TEXT,
    owner             TEXT,
    email_index       TEXT NOT NULL,
    external_ref      TEXT UNIQUE,
    wrapped_key       TEXT
);
CREATE INDEX leads_email_index ON leads (email_index);

CREATE TABLE receipts (
    client_id      TEXT NOT NULL,
    request_id     TEXT NOT NULL,
    request_hash   TEXT NOT NULL,
    lead_id        TEXT NOT NULL,
    version        INTEGER NOT NULL,
    position       INTEGER NOT NULL,
    stage          TEXT NOT NULL,
    created_at_us  INTEGER NOT NULL,
    PRIMARY KEY (client_id, request_id)
);
