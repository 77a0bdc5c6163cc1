"""A synthetic payments market (pure, seeded): merchants, their customers' habits, a day's rhythm.

Used by ``simulate``. Merchant sizes follow a Zipf law (a few large billers, a long tail of
shops); each merchant sells in one West/East African market (currency + country) with its own
channel mix; amounts are log-normal around a typical ticket of that currency; refunds, payouts,
wallet-to-wallet transfers, failures and pending payments appear at plausible rates. Times
follow a daily rhythm (quiet nights, a midday and an evening peak).
"""

from __future__ import annotations

import bisect
import math
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from molam_workloads.core.currencies import CURRENCIES

# (currency, country, typical ticket in that currency, share of merchants)
MARKETS: tuple[tuple[str, str, Decimal, float], ...] = (
    ("XOF", "SN", Decimal(5000), 0.25),
    ("XOF", "CI", Decimal(6000), 0.20),
    ("XOF", "ML", Decimal(4000), 0.05),
    ("GHS", "GH", Decimal(150), 0.15),
    ("NGN", "NG", Decimal(8000), 0.20),
    ("KES", "KE", Decimal(1500), 0.10),
    ("USD", "LR", Decimal(40), 0.05),
)
CHANNELS = ("mobile_money", "card", "bank_transfer", "wallet")
# Relative traffic per UTC hour of day: quiet nights, peaks around 12:00 and 19:00.
HOURLY_RHYTHM = (
    0.15, 0.10, 0.08, 0.08, 0.12, 0.25, 0.50, 0.80, 1.00, 1.10, 1.20, 1.35,
    1.45, 1.30, 1.15, 1.10, 1.15, 1.30, 1.50, 1.55, 1.30, 0.95, 0.60, 0.30,
)  # fmt: skip


MEAN_RHYTHM = sum(HOURLY_RHYTHM) / len(HOURLY_RHYTHM)


def rhythm_at(at: datetime) -> float:
    """Traffic at ``at`` relative to the day's average hour (HOURLY_RHYTHM, UTC)."""
    return HOURLY_RHYTHM[at.astimezone(UTC).hour] / MEAN_RHYTHM


@dataclass(frozen=True)
class Merchant:
    id: str
    currency: str
    country: str
    ticket: Decimal
    channels: tuple[float, ...]  # weights over CHANNELS
    weight: float  # share of the traffic


@dataclass(frozen=True)
class Spike:
    """``merchant`` publishes ``factor`` times its usual rate while ``start <= t < end``."""

    merchant: str
    factor: int
    start: datetime
    end: datetime
    period: timedelta | None = None  # repeats every period after start (real-time runs)

    def active(self, t: datetime) -> bool:
        if t < self.start:
            return False
        if self.period:
            return (t - self.start) % self.period < self.end - self.start
        return t < self.end


def merchants(
    n: int,
    rnd: random.Random,
    markets: tuple[tuple[str, str, Decimal, float], ...] = MARKETS,
) -> list[Merchant]:
    """``n`` merchants ``M-0001``… with Zipf-distributed traffic shares (exponent 1.1), each in
    one of ``markets`` (shaped like MARKETS), drawn by its share of merchants."""
    raw = [1 / (i + 1) ** 1.1 for i in range(n)]
    total = sum(raw)
    places = [m[:3] for m in markets]
    shares = [m[3] for m in markets]
    out = []
    for i in range(n):
        currency, country, ticket = rnd.choices(places, shares)[0]
        mix = (rnd.uniform(2, 6), rnd.uniform(0.5, 2), rnd.uniform(0.1, 1), rnd.uniform(0.3, 2))
        out.append(Merchant(f"M-{i + 1:04d}", currency, country, ticket, mix, raw[i] / total))
    return out


def _quantize(amount: Decimal, currency: str) -> Decimal:
    return amount.quantize(Decimal(1).scaleb(-CURRENCIES[currency]), rounding=ROUND_HALF_UP)


@dataclass
class Market:
    """Draws transactions; ``rnd`` makes a run reproducible."""

    merchants: list[Merchant]
    rnd: random.Random
    run_id: str

    def __post_init__(self) -> None:
        self._cum = list(_cumulative(m.weight for m in self.merchants))
        self._seq = 0

    def pick(self) -> Merchant:
        return self.merchants[bisect.bisect(self._cum, self.rnd.random() * self._cum[-1])]

    def transaction(self, at: datetime, merchant: Merchant | None = None) -> dict[str, object]:
        """One event document (docs/events.md), money as decimal strings."""
        rnd = self.rnd
        m = merchant or self.pick()
        self._seq += 1
        kind = rnd.choices(("payment", "refund", "payout", "transfer"), (86, 4, 6, 4))[0]
        channel = rnd.choices(CHANNELS, m.channels)[0]
        fail = 0.12 if channel == "card" else 0.05
        status = rnd.choices(("succeeded", "failed", "pending"), (1 - fail - 0.02, fail, 0.02))[0]
        ticket = m.ticket * Decimal(str(round(math.exp(rnd.gauss(0, 0.9)), 4)))
        if kind in ("payout", "transfer"):
            ticket *= 3
        amount = max(_quantize(ticket, m.currency), Decimal(1))
        fee = Decimal(0)
        if kind == "payment" and status == "succeeded":
            fee = _quantize(amount * Decimal("0.015" if channel != "card" else "0.029"), m.currency)
        wallet_to_wallet = kind == "transfer" and rnd.random() < 0.6
        return {
            "event_id": uuid.UUID(int=rnd.getrandbits(128), version=4).hex,
            "txn_id": f"SIM-{self.run_id}-{self._seq}",
            "merchant_id": None if wallet_to_wallet else m.id,
            "occurred_at": at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "amount": str(amount),
            "currency": m.currency,
            "country": m.country,
            "channel": "wallet" if wallet_to_wallet else channel,
            "type": kind,
            "status": status,
            "fee": str(fee),
        }


def _cumulative(weights: Iterator[float] | list[float]) -> Iterator[float]:
    total = 0.0
    for w in weights:
        total += w
        yield total


def history_times(
    count: int, start: datetime, end: datetime, rnd: random.Random
) -> Iterator[datetime]:
    """``count`` instants between ``start`` and ``end``, in order, shaped by HOURLY_RHYTHM.

    Stratified inverse sampling over hourly buckets: exact count, chronological, no sorting.
    """
    first = start.replace(minute=0, second=0, microsecond=0)
    hours = max(math.ceil((end - first).total_seconds() / 3600), 1)
    bucket_starts = [first + timedelta(hours=h) for h in range(hours)]
    weights = []
    for b in bucket_starts:
        lo, hi = max(b, start), min(b + timedelta(hours=1), end)
        frac = max((hi - lo).total_seconds(), 0) / 3600
        weights.append(HOURLY_RHYTHM[b.hour] * frac)
    cum = list(_cumulative(weights))
    total = cum[-1]
    for i in range(count):
        q = (i + rnd.random()) / count * total
        h = min(bisect.bisect(cum, q), hours - 1)
        below = cum[h - 1] if h else 0.0
        within = (q - below) / weights[h] if weights[h] else 0.0
        lo = max(bucket_starts[h], start)
        span = min(bucket_starts[h] + timedelta(hours=1), end) - lo
        yield min(lo + span * within, end - timedelta(microseconds=1))
