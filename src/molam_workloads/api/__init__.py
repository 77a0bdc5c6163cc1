"""The FastAPI service: KPIs, alert rules and alerts, anomalies, dashboard, health, metrics."""
