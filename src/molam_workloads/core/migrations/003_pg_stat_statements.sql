-- The runbook's "High API Latency" diagnosis reads pg_stat_statements. Creating the extension
-- needs a superuser and the library in shared_preload_libraries (`make stack` sets it for the
-- embedded server); without either, migrate goes on and the runbook check says why.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
EXCEPTION WHEN insufficient_privilege OR undefined_file OR feature_not_supported THEN
    RAISE NOTICE 'pg_stat_statements not created: %', SQLERRM;
END $$;
