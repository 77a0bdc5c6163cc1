-- Retention of the exactly-once ledger (LEDGER_RETENTION_DAYS): the consumer deletes rows by
-- occurred_at. BRIN, not B-tree: rows arrive roughly in time order, so a few pages summarise
-- millions of rows, and the ledger insert (the consumer's hot path) pays no second B-tree
-- (100,000 inserts in 10,000-row batches: 6.9-9.0 us per row with it, 7.1-8.1 without).
CREATE INDEX IF NOT EXISTS ingested_transactions_occurred_at_brin
    ON ingested_transactions USING brin (occurred_at);
