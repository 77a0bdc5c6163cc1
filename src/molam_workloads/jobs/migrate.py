"""``molam-analytics migrate``: apply the versioned schema; safe from several pods at once."""

from __future__ import annotations

import argparse

from molam_workloads.core.db import migrate
from molam_workloads.core.settings import DatabaseSettings, load_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # configuration comes from DATABASE_URL


async def run(args: argparse.Namespace) -> int:
    settings = load_settings(DatabaseSettings)
    applied = await migrate(settings.database_url)
    print(f"schema up to date ({len(applied)} migration(s) applied)")
    return 0
