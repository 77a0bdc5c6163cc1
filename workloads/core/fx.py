"""Conversion to the reporting currency, applied at query time.

Aggregates keep amounts in their own currency (a dimension of every aggregate row); a query
groups first, then joins the few resulting rows to ``fx_rate_ranges`` with this fragment, so new
FX rates correct history and a 1M-row scan converts a handful of groups, not every row.
"""

from __future__ import annotations


def rate_join(alias: str, ts_expr: str, quote_param: str) -> str:
    """SQL ``LEFT JOIN`` giving ``fx.rate`` for ``alias.currency`` at ``ts_expr``.

    ``quote_param`` is the placeholder of the reporting currency (e.g. ``$3``). A currency
    equal to the reporting currency converts at 1 even without a row; one with no rate at all
    yields NULL, which callers report as unconverted rather than silently dropping.
    """
    return (
        f"LEFT JOIN fx_rate_ranges fx ON fx.quote = {quote_param} "
        f"AND fx.currency = {alias}.currency "
        f"AND {ts_expr} >= fx.valid_from AND {ts_expr} < fx.valid_to"
    )


def rate_expr(alias: str, quote_param: str) -> str:
    """SQL expression of the rate for ``alias.currency`` (needs ``rate_join`` in the query)."""
    return f"(CASE WHEN {alias}.currency = {quote_param} THEN 1 ELSE fx.rate END)"
