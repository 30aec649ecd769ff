-- Crypto-shredding (GDPR erasure). Each lead's wrapped data key moves to its
-- own table, written once at capture and deleted by the erasure, so the key
-- never has older versions in `leads` tuples (which each command rewrites)
-- and the purge only has to rewrite this small table (`VACUUM FULL
-- lead_keys`, see docs/personal-data.md).
CREATE TABLE lead_keys (
    lead_id     UUID PRIMARY KEY,
    wrapped_key TEXT NOT NULL
);
-- No statistics samples of the keys in pg_statistic, which no purge rewrites.
ALTER TABLE lead_keys ALTER COLUMN wrapped_key SET STATISTICS 0;
INSERT INTO lead_keys (lead_id, wrapped_key) SELECT lead_id, wrapped_key FROM leads WHERE wrapped_key IS NOT NULL;
-- A dropped column's bytes stay in old tuples until `VACUUM FULL leads`
-- (once, after upgrading a database that holds leads).
ALTER TABLE leads DROP COLUMN wrapped_key;
-- An erased lead takes no further command; its email index is emptied, so
-- the address can be captured again as a new lead.
ALTER TABLE leads ADD COLUMN erased BOOLEAN NOT NULL DEFAULT false;
UPDATE leads SET erased = true, email_index = '' WHERE lead_id NOT IN (SELECT lead_id FROM lead_keys);
