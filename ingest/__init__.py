"""Real-time product analytics ingest: validate events, batch them into ClickHouse."""
