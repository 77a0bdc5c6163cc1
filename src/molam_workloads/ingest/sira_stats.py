"""SIRA's statistics, as pure functions: a robust, optionally seasonal moving baseline per series.

A *series* is one metric (transaction count or volume) of one merchant (or of the platform)
per time bucket. Its baseline is an exponentially weighted mean and variance (EWMA), made
robust three ways — each cheap, each O(1) state kept in one Redis hash:

- **minimum history**: nothing is judged before ``min_history`` buckets were seen; the first
  buckets are averaged plainly (weight 1/n) so the start is not biased towards the first one;
- **winsorized updates**: a bucket moves the baseline only as far as ``mean ± winsor_z·σ``, so
  one outlier (a spike, a drop) cannot drag the mean or widen the band it is judged against;
- **variance floor**: σ is at least ``rel_floor·|mean|``, and for counts at least the Poisson
  noise ``√mean``, so a very regular series does not flag ordinary noise;
- **hour-of-week seasonality** (option): each of the 168 hours of the week has its own
  baseline; once it has ``seasonal_min_history`` observations it is what a bucket is judged
  against (falling back to the overall baseline before that), so Monday 09:00 is compared with
  past Monday 09:00s, not with the night before.

``z = (value − expected) / σ``; ``|z| > z_threshold`` is an anomaly (``spike`` above,
``drop`` below). Counts under ``min_level`` on both sides are not judged (a merchant going from
0.4 to 3 transactions a bucket is noise, not news). ``plain_zscores`` is the textbook
detector (mean and standard deviation of the previous ``window`` buckets) kept for comparison.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

HOURS_PER_WEEK = 168


@dataclass(frozen=True)
class DetectorConfig:
    z_threshold: float = 3.0
    min_history: int = 12
    alpha: float = 0.02  # weight of a new bucket once min_history is reached (~50-bucket memory)
    winsor_z: float = 3.0
    rel_floor: float = 0.05
    min_level: float = 5.0  # counts: judge only if value or expectation reaches this
    seasonal: bool = True
    seasonal_min_history: int = 3
    seasonal_alpha: float = 0.3
    resid_alpha: float = 0.02


@dataclass(frozen=True)
class Moments:
    """EWMA state of one baseline: observations seen, mean, variance."""

    n: int = 0
    mean: float = 0.0
    var: float = 0.0


@dataclass(frozen=True)
class Judgment:
    value: float
    expected: float
    sigma: float
    zscore: float
    anomalous: bool

    @property
    def direction(self) -> str:
        return "spike" if self.zscore > 0 else "drop"


def how_slot(bucket: datetime) -> int:
    """Hour of the week (0 = Monday 00:00 UTC … 167) of a bucket start (aware, UTC)."""
    return bucket.weekday() * 24 + bucket.hour


def sigma(m: Moments, *, count: bool, cfg: DetectorConfig) -> float:
    floor = cfg.rel_floor * abs(m.mean)
    if count:
        floor = max(floor, math.sqrt(max(m.mean, 1.0)))
    return max(math.sqrt(max(m.var, 0.0)), floor, 1e-9)


def observe(
    m: Moments, x: float, *, alpha: float, warm: int, s: float, cfg: DetectorConfig
) -> Moments:
    """Fold bucket value ``x`` into ``m``: plain mean for the first ``warm`` observations,
    then EWMA with weight ``alpha`` of ``x`` clipped to ``mean ± winsor_z·s``."""
    if m.n == 0:
        return Moments(1, x, 0.0)
    if m.n >= warm:
        lo, hi = m.mean - cfg.winsor_z * s, m.mean + cfg.winsor_z * s
        x = min(max(x, lo), hi)
        a = alpha
    else:
        a = max(alpha, 1.0 / (m.n + 1))
    d = x - m.mean
    mean = m.mean + a * d
    var = (1 - a) * (m.var + a * d * d)
    return Moments(m.n + 1, mean, var)


@dataclass(frozen=True)
class SeriesState:
    """The baseline of one series: overall moments plus one per hour of the week."""

    overall: Moments = Moments()
    slots: tuple[Moments, ...] = tuple(Moments() for _ in range(HOURS_PER_WEEK))
    # Relative residuals (x - seasonal mean) / seasonal mean, over every bucket judged
    # against a warm seasonal slot: the noise level of the series, learnt from many buckets
    # rather than from the few a single hour-of-week slot has seen.
    resid: Moments = Moments()
    # The same for the overall baseline over the same buckets, to tell which predicts better.
    resid_overall: Moments = Moments()


def _seasonal(st: SeriesState, slot: int, cfg: DetectorConfig) -> Moments | None:
    m = st.slots[slot]
    return m if cfg.seasonal and m.n >= cfg.seasonal_min_history else None


def step(
    st: SeriesState, slot: int, x: float, *, count: bool, cfg: DetectorConfig
) -> tuple[SeriesState, Judgment | None]:
    """Judge bucket value ``x`` against the baseline (None while learning), then learn it."""
    seasonal = _seasonal(st, slot, cfg)
    # The seasonal baseline is used where it predicts better than the overall one (smaller
    # relative residuals so far): on a series without a weekly shape, the overall baseline,
    # estimated from many more buckets, is the sharper one.
    use_seasonal = (
        seasonal is not None
        and st.resid.n >= cfg.min_history
        and st.resid.var < st.resid_overall.var
    )
    if seasonal is not None and use_seasonal:
        exp = seasonal
        s = max(
            math.sqrt(st.resid.var) * abs(exp.mean),
            sigma(Moments(1, exp.mean), count=count, cfg=cfg),
        )
    else:
        exp = st.overall
        s = sigma(exp, count=count, cfg=cfg)
    judgment = None
    if st.overall.n >= cfg.min_history and not (count and max(x, exp.mean) < cfg.min_level):
        z = (x - exp.mean) / s
        judgment = Judgment(x, exp.mean, s, z, abs(z) > cfg.z_threshold)
    resid, resid_overall = st.resid, st.resid_overall
    if seasonal is not None:
        resid = _resid(resid, x, seasonal.mean, cfg)
        resid_overall = _resid(resid_overall, x, st.overall.mean, cfg)
    s_overall = sigma(st.overall, count=count, cfg=cfg)
    overall = observe(st.overall, x, alpha=cfg.alpha, warm=cfg.min_history, s=s_overall, cfg=cfg)
    slot_m = st.slots[slot]
    s_slot = s if use_seasonal else sigma(slot_m, count=count, cfg=cfg)
    new_slot = observe(
        slot_m, x, alpha=cfg.seasonal_alpha, warm=cfg.seasonal_min_history, s=s_slot, cfg=cfg
    )
    slots = (*st.slots[:slot], new_slot, *st.slots[slot + 1 :])
    return replace(
        st, overall=overall, slots=slots, resid=resid, resid_overall=resid_overall
    ), judgment


def _resid(m: Moments, x: float, mean: float, cfg: DetectorConfig) -> Moments:
    """Fold the relative residual of ``x`` against a baseline ``mean`` into ``m``."""
    r = (x - mean) / max(abs(mean), 1.0)
    r_s = max(math.sqrt(m.var), cfg.rel_floor)
    return observe(m, r, alpha=cfg.resid_alpha, warm=cfg.min_history, s=r_s, cfg=cfg)


def detect(
    series: Sequence[tuple[datetime, float]], *, count: bool, cfg: DetectorConfig
) -> list[Judgment | None]:
    """Run the robust detector over a whole series (for evaluation and tests)."""
    st = SeriesState()
    out: list[Judgment | None] = []
    for bucket, x in series:
        st, j = step(st, how_slot(bucket), x, count=count, cfg=cfg)
        out.append(j)
    return out


def plain_zscores(
    values: Sequence[float], *, window: int, z_threshold: float
) -> list[Judgment | None]:
    """The textbook detector: z against mean and std of the previous ``window`` values."""
    out: list[Judgment | None] = []
    for i, x in enumerate(values):
        if i < window:
            out.append(None)
            continue
        past = values[i - window : i]
        mean = sum(past) / window
        sd = math.sqrt(sum((p - mean) ** 2 for p in past) / (window - 1)) or 1e-9
        z = (x - mean) / sd
        out.append(Judgment(x, mean, sd, z, abs(z) > z_threshold))
    return out


@dataclass(frozen=True)
class Score:
    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def precision(self) -> float:
        flagged = self.true_positives + self.false_positives
        return self.true_positives / flagged if flagged else 1.0

    @property
    def recall(self) -> float:
        actual = self.true_positives + self.false_negatives
        return self.true_positives / actual if actual else 1.0


def score(judgments: Sequence[Judgment | None], truth: Iterable[int], start: int = 0) -> Score:
    """Precision/recall of flagged indices (from ``start``) against the injected ones."""
    truth_set = {i for i in truth if i >= start}
    flagged = {i for i, j in enumerate(judgments) if i >= start and j is not None and j.anomalous}
    return Score(len(flagged & truth_set), len(flagged - truth_set), len(truth_set - flagged))
