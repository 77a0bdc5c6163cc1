"""The Kopf operator for AlertRule and AnalyticsPipeline (import name: molam_operator)."""
