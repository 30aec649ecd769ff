-- The journey read model: one row per lead and generation, derived from the
-- log by the projector (funnel, conversion, lead quality, SLA). A rebuild writes
-- a new generation beside the live one and swaps the cursor in one
-- transaction; queries read only the cursor's generation.
CREATE TABLE journeys (
    generation        INTEGER NOT NULL,
    lead_id           TEXT NOT NULL,
    captured_at_us    INTEGER NOT NULL,
    -- In MQL or SQL now: the only leads with an open hand-off.
    awaiting_sales    INTEGER NOT NULL,
    journey           TEXT NOT NULL,
    PRIMARY KEY (generation, lead_id)
);
CREATE INDEX journeys_by_capture ON journeys (generation, captured_at_us);
CREATE INDEX journeys_awaiting_sales ON journeys (generation) WHERE awaiting_sales = 1;

-- Where each projection is: the generation queries read and the last log
-- position applied to it. Advanced in the same transaction as the rows.
CREATE TABLE projections (
    name        TEXT PRIMARY KEY,
    generation  INTEGER NOT NULL,
    position    INTEGER NOT NULL
);
INSERT INTO projections (name, generation, position) VALUES ('journeys', 1, 0);
