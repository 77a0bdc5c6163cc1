"""Where rows come from: whole UTC days the daily view holds, hourly rows for the rest."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from molam_workloads.api.queries.aggregates import Part, plan_parts, utc_aligned

T = datetime(2025, 7, 1, tzinfo=UTC)
H = timedelta(hours=1)
D = timedelta(days=1)


def test_without_a_refresh_everything_is_hourly() -> None:
    assert plan_parts(T, T + 5 * D, None, mv_allowed=True) == [Part("hourly", T, T + 5 * D)]


def test_not_allowed_is_hourly() -> None:
    assert plan_parts(T, T + 5 * D, T + 30 * D, mv_allowed=False) == [Part("hourly", T, T + 5 * D)]


def test_partial_days_around_whole_days() -> None:
    parts = plan_parts(T + 5 * H, T + 3 * D + 7 * H, T + 30 * D, mv_allowed=True)
    assert parts == [
        Part("hourly", T + 5 * H, T + D),
        Part("daily", date(2025, 7, 2), date(2025, 7, 4)),
        Part("hourly", T + 3 * D, T + 3 * D + 7 * H),
    ]


def test_days_after_the_refresh_come_from_hourly() -> None:
    # refreshed at 07-03 00:30: 07-02 ended less than the safety margin before, so hourly
    parts = plan_parts(T, T + 5 * D, T + 2 * D + 30 * timedelta(minutes=1), mv_allowed=True)
    assert parts == [
        Part("daily", date(2025, 7, 1), date(2025, 7, 2)),
        Part("hourly", T + D, T + 5 * D),
    ]
    # refreshed at 07-03 02:00: 07-01 and 07-02 from the view
    parts = plan_parts(T, T + 5 * D, T + 2 * D + 2 * H, mv_allowed=True)
    assert parts == [
        Part("daily", date(2025, 7, 1), date(2025, 7, 3)),
        Part("hourly", T + 2 * D, T + 5 * D),
    ]


def test_no_whole_day_is_hourly() -> None:
    assert plan_parts(T + H, T + D + H, T + 30 * D, mv_allowed=True) == [
        Part("hourly", T + H, T + D + H)
    ]


def test_utc_aligned_zones() -> None:
    assert utc_aligned(ZoneInfo("UTC"), T, T + 90 * D)
    assert utc_aligned(ZoneInfo("Africa/Dakar"), T, T + 90 * D)
    assert not utc_aligned(ZoneInfo("Europe/London"), T, T + 2 * D)  # BST in July
    assert not utc_aligned(ZoneInfo("Africa/Lagos"), T, T + 2 * D)
