-- The ledger's key compares bytes (COLLATE "C"), not by the database's collation. Every batch
-- probes and inserts one key per transaction in its unique B-tree; under a libc collation other
-- than "C" (C.UTF-8 included, before PostgreSQL 17) each comparison goes through strcoll.
-- Identifiers need equality and a fixed order (the writer sorts its inserts by bytes), never a
-- linguistic one (docs/decisions/009-ledger-key-bytes.md). Changing only the collation
-- rebuilds the index, not the table.
ALTER TABLE ingested_transactions ALTER COLUMN txn_id TYPE text COLLATE "C";
