"""``molam-analytics fx load FILE``: dated FX rates from CSV (the runbook's monthly task).

Lines are ``date,currency,rate`` (an optional header line), ``rate`` being how many units of
REPORTING_CURRENCY one unit of ``currency`` is worth on ``date``. The whole file is validated
before anything is written, then loaded in one transaction: a bad line loads nothing.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path

from molam_workloads.core.currencies import CURRENCIES
from molam_workloads.core.db import connect
from molam_workloads.core.errors import ConfigError
from molam_workloads.core.settings import DatabaseSettings, ReportingSettings, load_settings

MAX_ERRORS_SHOWN = 5


class FxSettings(DatabaseSettings, ReportingSettings):
    pass


@dataclass(frozen=True)
class Rate:
    day: date
    currency: str
    rate: Decimal


class BadFxFile(ConfigError):
    """The CSV has lines that cannot be loaded (nothing was written)."""


def _parse_line(fields: list[str]) -> Rate:
    if len(fields) != 3:
        raise ValueError(f"expected 3 fields (date,currency,rate), got {len(fields)}")
    raw_day, raw_currency, raw_rate = (f.strip() for f in fields)
    try:
        day = date.fromisoformat(raw_day)
    except ValueError:
        raise ValueError(f"date {raw_day!r} is not YYYY-MM-DD") from None
    currency = raw_currency.upper()
    if currency not in CURRENCIES:
        raise ValueError(f"currency {raw_currency!r} is not an ISO 4217 code")
    try:
        rate = Decimal(raw_rate)
    except InvalidOperation:
        raise ValueError(f"rate {raw_rate!r} is not a decimal number") from None
    if not rate.is_finite() or rate <= 0:
        raise ValueError(f"rate {raw_rate!r} must be a positive number")
    return Rate(day, currency, rate)


def parse_rates(text: str) -> list[Rate]:
    """Every rate of the file, or ``BadFxFile`` naming each bad line (1-based)."""
    rates: list[Rate] = []
    errors: list[str] = []
    seen: dict[tuple[date, str], int] = {}
    for lineno, fields in enumerate(csv.reader(text.splitlines()), start=1):
        if not fields or all(not f.strip() for f in fields):
            continue
        if lineno == 1 and fields[0].strip().lower() == "date":
            continue  # header
        try:
            rate = _parse_line(fields)
        except ValueError as exc:
            errors.append(f"line {lineno}: {exc}")
            continue
        key = (rate.day, rate.currency)
        if key in seen:
            errors.append(f"line {lineno}: {rate.currency} on {rate.day} repeats line {seen[key]}")
            continue
        seen[key] = lineno
        rates.append(rate)
    if errors:
        more = len(errors) - MAX_ERRORS_SHOWN
        shown = "; ".join(errors[:MAX_ERRORS_SHOWN]) + (f"; and {more} more" if more > 0 else "")
        raise BadFxFile(f"nothing loaded, {len(errors)} bad line(s): {shown}")
    if not rates:
        raise BadFxFile("nothing loaded: the file has no rates")
    return rates


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    load = sub.add_parser("load", help="load dated rates from a CSV file (date,currency,rate)")
    load.add_argument("file", type=Path, help="CSV: date,currency,rate (header optional)")


async def load(dsn: str, quote: str, rates: list[Rate]) -> None:
    conn = await connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO fx_rates (day, currency, quote, rate)"
                " SELECT d, c, $4, r"
                " FROM unnest($1::date[], $2::text[], $3::numeric[]) AS t (d, c, r)"
                " ON CONFLICT (quote, currency, day) DO UPDATE"
                " SET rate = EXCLUDED.rate, loaded_at = now()",
                [r.day for r in rates],
                [r.currency for r in rates],
                [r.rate for r in rates],
                quote,
            )
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> int:
    settings = load_settings(FxSettings)
    try:
        text = args.file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {args.file}: {exc}") from None
    rates = parse_rates(text)
    await load(settings.database_url, settings.reporting_currency, rates)
    currencies = sorted({r.currency for r in rates})
    print(
        f"loaded {len(rates)} FX rate(s) to {settings.reporting_currency} from {args.file}"
        f" ({', '.join(currencies)}; {min(r.day for r in rates)}..{max(r.day for r in rates)})"
    )
    return 0
