"""Molam Analytics workloads: ingestion, API, alerts and batch jobs over a shared core."""
