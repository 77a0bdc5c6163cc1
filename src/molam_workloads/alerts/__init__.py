"""The alerts evaluator: set-based rule evaluation, state machine, webhook notifications."""
