-- Retention of the exactly-once ledger (LEDGER_RETENTION_DAYS): the consumer deletes rows by
-- occurred_at. BRIN, not B-tree: rows arrive roughly in time order, so a few pages summarise
-- millions of rows, and the ledger insert (the consumer's hot path) pays no second B-tree
-- (docs/decisions/010-ledger-brin.md).
CREATE INDEX IF NOT EXISTS ingested_transactions_occurred_at_brin
    ON ingested_transactions USING brin (occurred_at);
