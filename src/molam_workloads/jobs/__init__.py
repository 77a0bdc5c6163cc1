"""Batch jobs and operator tools: migrate, refresh-views, backfill, lag, simulate, fx."""
