"""``molam-analytics fx load FILE``: all or nothing, bad lines named."""

from __future__ import annotations

import argparse
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from molam_workloads.jobs import fx


async def _rates(db: asyncpg.Connection) -> dict[tuple[str, str], Decimal]:
    rows = await db.fetch("SELECT day::text AS d, currency, rate FROM fx_rates WHERE quote = 'USD'")
    return {(r["d"], r["currency"].strip()): r["rate"] for r in rows}


async def test_load_good_file_then_update(
    db: asyncpg.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = await _rates(db)
    good = tmp_path / "rates.csv"
    good.write_text(
        "date,currency,rate\n2025-07-01,XOF,0.00166\n\n2025-07-01,ghs,0.0851\n2025-07-02,XOF,0.00167\n"
    )
    assert await fx.run(argparse.Namespace(action="load", file=good)) == 0
    assert "loaded 3 FX rate(s) to USD" in capsys.readouterr().out
    after = await _rates(db)
    assert after[("2025-07-01", "GHS")] == Decimal("0.0851")
    assert len(after) == len(before) + 3

    # Without a header, updating one and adding one.
    good.write_text("2025-07-01,XOF,0.0017\n2025-07-03,XOF,0.0018\n")
    await fx.run(argparse.Namespace(action="load", file=good))
    after = await _rates(db)
    assert after[("2025-07-01", "XOF")] == Decimal("0.0017")
    assert len(after) == len(before) + 4


async def test_bad_lines_load_nothing(db: asyncpg.Connection, tmp_path: Path) -> None:
    before = await _rates(db)
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "date,currency,rate\n"
        "2025-07-01,XOF,0.00166\n"
        "2025-07-32,XOF,0.1\n"
        "2025-07-02,ABC,0.1\n"
        "2025-07-02,XOF,-1\n"
        "2025-07-02,XOF\n"
        "2025-07-01,XOF,0.2\n"
    )
    with pytest.raises(fx.BadFxFile) as err:
        await fx.run(argparse.Namespace(action="load", file=bad))
    msg = str(err.value)
    for line in ("line 3:", "line 4:", "line 5:", "line 6:", "line 7:"):
        assert line in msg
    assert "line 2:" not in msg and msg.startswith("nothing loaded, 5 bad line(s)")
    assert await _rates(db) == before


async def test_missing_or_empty_file(db: asyncpg.Connection, tmp_path: Path) -> None:
    del db
    with pytest.raises(fx.ConfigError, match="cannot read"):
        await fx.run(argparse.Namespace(action="load", file=tmp_path / "nope.csv"))
    empty = tmp_path / "empty.csv"
    empty.write_text("date,currency,rate\n")
    with pytest.raises(fx.BadFxFile, match="no rates"):
        await fx.run(argparse.Namespace(action="load", file=empty))
