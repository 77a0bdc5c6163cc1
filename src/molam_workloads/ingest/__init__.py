"""The Kafka consumer: exactly-once hourly aggregates, live counters, dead letters, SIRA."""
