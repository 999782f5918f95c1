"""Integration tests: a real Kafka broker (and PostgreSQL, Kafka Connect, the Yespo stand-in)."""
