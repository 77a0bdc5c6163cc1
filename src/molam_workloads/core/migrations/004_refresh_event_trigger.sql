-- Record every REFRESH MATERIALIZED VIEW, including a manual one from psql (the runbook's
-- "Manual refresh"), so "when was it last refreshed" has one answer: analytics_view_refreshes.
-- Event triggers need a superuser; without one, only `molam-analytics refresh-views` records.
CREATE FUNCTION analytics_record_view_refresh() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    cmd record;
BEGIN
    FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands()
               WHERE command_tag = 'REFRESH MATERIALIZED VIEW' LOOP
        INSERT INTO analytics_view_refreshes AS v (view_name, refreshed_at, duration_ms)
        VALUES (split_part(cmd.object_identity, '.', 2), clock_timestamp(), NULL)
        ON CONFLICT (view_name) DO UPDATE
            SET refreshed_at = excluded.refreshed_at, duration_ms = NULL;
    END LOOP;
END $$;

DO $$
BEGIN
    CREATE EVENT TRIGGER analytics_view_refresh ON ddl_command_end
        WHEN TAG IN ('REFRESH MATERIALIZED VIEW')
        EXECUTE FUNCTION analytics_record_view_refresh();
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'not a superuser: manual refreshes will not be recorded';
END $$;
