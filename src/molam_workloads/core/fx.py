"""Conversion to the reporting currency, applied at query time.

Aggregates keep amounts in their own currency (a dimension of every aggregate row); a query
groups first, then looks up the rate of the few resulting rows with this fragment (the rates
of ``fx_rate_ranges``), so new FX rates correct history and a 1M-row scan converts a handful
of groups, not every row.
"""

from __future__ import annotations


def rate_on(currency: str, day: str, quote_param: str) -> str:
    """SQL expression of the rate of ``currency`` (an expression) on ``day`` (a date
    expression), ``fx_rate_ranges``' meaning: the currency's latest rate on or before that day,
    else its first rate; NULL when it has none.

    Two probes of the primary key (quote, currency, day) rather than a join with the view,
    which numbers every rate ever loaded for each row, so the cost does not grow with history
    (docs/decisions/018-fx-rate-probes.md). ``quote_param`` is the reporting currency's
    placeholder (e.g. ``$3``).
    """
    # bpchar on both sides: compared with a text parameter, the key columns would be cast to
    # text and the primary key left unused.
    probe = (
        f"SELECT x.rate FROM fx_rates x WHERE x.quote = ({quote_param})::bpchar "
        f"AND x.currency = {currency}"
    )
    return (
        f"coalesce(({probe} AND x.day <= {day} ORDER BY x.day DESC LIMIT 1), "
        f"({probe} ORDER BY x.day LIMIT 1))"
    )


def rate_join(alias: str, ts_expr: str, quote_param: str) -> str:
    """SQL ``LEFT JOIN LATERAL`` giving ``fx.rate`` for ``alias.currency`` at ``ts_expr`` (a
    timestamptz): :func:`rate_on` its UTC day. A currency equal to the reporting currency
    converts at 1 even without a row (``rate_expr``); one with no rate at all yields NULL,
    which callers report as unconverted rather than silently dropping.
    """
    rate = rate_on(f"{alias}.currency", f"({ts_expr} AT TIME ZONE 'UTC')::date", quote_param)
    return f"LEFT JOIN LATERAL (SELECT {rate} AS rate) fx ON true"


def rate_expr(alias: str, quote_param: str) -> str:
    """SQL expression of the rate for ``alias.currency`` (needs ``rate_join`` in the query)."""
    return f"(CASE WHEN {alias}.currency = {quote_param} THEN 1 ELSE fx.rate END)"
