-- Named leases: at most one holder at a time (e.g. the NATS relay), taken
-- over by a standby once it expires. `token` grows each time the lease
-- changes hands; `progress` is the holder's last reported position.
CREATE TABLE leases (
    name            TEXT PRIMARY KEY,
    holder          TEXT NOT NULL,
    token           INTEGER NOT NULL,
    expires_at_us   INTEGER NOT NULL,
    progress        INTEGER NOT NULL
);
