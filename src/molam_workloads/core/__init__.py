"""The small core every workload and the operator share: settings, schema, events, clients, metrics.

Nothing in here imports a workload or the operator (an import-linter contract says so).
"""
