-- The API's daily rollup without merchants: mv_txn_daily_agg summed over merchants, so that the
-- KPIs and time series of the whole platform (or a country, channel, currency) read a few
-- thousand rows instead of one per merchant and day. The API rebuilds it in the background
-- after each refresh of mv_txn_daily_agg, in one REPEATABLE READ transaction that also records
-- which refresh it was built from; it is used only while that refresh is the current one.
CREATE TABLE analytics_daily_rollup (
    day                   date NOT NULL,
    country               char(2) NOT NULL,
    currency              char(3) NOT NULL,
    channel               text NOT NULL,
    tx_count              bigint NOT NULL,
    succeeded_count       bigint NOT NULL,
    failed_count          bigint NOT NULL,
    pending_count         bigint NOT NULL,
    payment_count         bigint NOT NULL,
    payment_volume_local  numeric NOT NULL,
    refund_count          bigint NOT NULL,
    refund_volume_local   numeric NOT NULL,
    fee_local             numeric NOT NULL,
    PRIMARY KEY (day, country, currency, channel)
);

CREATE TABLE analytics_rollup_state (
    name                 text PRIMARY KEY,
    source_refreshed_at  timestamptz NOT NULL,  -- analytics_view_refreshes of the source view
    built_at             timestamptz NOT NULL DEFAULT now(),
    duration_ms          integer
);
