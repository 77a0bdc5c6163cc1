-- A conflicting duplicate (same txn_id, other content) goes to the DLQ, the first copy staying
-- counted (issue 13): the ledger keeps a 64-bit hash of each counted stream copy's content
-- (the consumer's Summary computes it), so a copy arriving in a later batch is told apart from
-- a plain duplicate. NULL for rows written before, and for backfill's: never a conflict.
-- Nullable, no default: adding it rewrites nothing.
ALTER TABLE ingested_transactions ADD COLUMN IF NOT EXISTS content_hash bigint;
