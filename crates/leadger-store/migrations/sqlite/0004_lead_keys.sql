-- Crypto-shredding (GDPR erasure): each lead's wrapped data key in its own
-- table, written once at capture and deleted by the erasure. The connection
-- runs with `secure_delete`, so deleted rows are overwritten with zeros.
CREATE TABLE lead_keys (
    lead_id     TEXT PRIMARY KEY,
    wrapped_key TEXT NOT NULL
);
INSERT INTO lead_keys (lead_id, wrapped_key) SELECT lead_id, wrapped_key FROM leads WHERE wrapped_key IS NOT NULL;
ALTER TABLE leads DROP COLUMN wrapped_key;
-- An erased lead takes no further command; its email index is emptied, so
-- the address can be captured again as a new lead.
ALTER TABLE leads ADD COLUMN erased INTEGER NOT NULL DEFAULT 0;
UPDATE leads SET erased = 1, email_index = '' WHERE lead_id NOT IN (SELECT lead_id FROM lead_keys);
