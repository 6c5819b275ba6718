"""Prometheus metrics of the pipeline, on a registry each app owns (so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .storage.failures import FAILURE_KINDS

__all__ = ["Metrics", "CONTENT_TYPE_LATEST", "SLOW_CLIENT_REASONS"]

SLOW_CLIENT_REASONS = ("header_timeout", "body_timeout", "evicted")


class Metrics:
    """Every metric the service exports; names are a contract with the Grafana pipeline dashboard."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_accepted = Counter(
            "ingest_events_accepted", "Events that passed validation and were buffered for storage.", registry=r)
        self.events_rejected = Counter(
            "ingest_events_rejected", "Events refused by validation (reported to the client).", registry=r)
        self.events_stored = Counter(
            "ingest_events_stored", "Events ClickHouse confirmed as inserted.", registry=r)
        self.events_dead_lettered = Counter(
            "ingest_events_dead_lettered",
            "Events ClickHouse refused for their content, written to the dead-letter file.",
            registry=r)
        self.wal_bytes = Gauge(
            "ingest_wal_bytes", "Bytes of write-ahead log on disk (events not yet confirmed by ClickHouse).",
            registry=r)
        self.requests = Counter(
            "ingest_http_requests", "HTTP requests answered, by route and status code.", ["route", "status"],
            registry=r)
        self.request_duration = Histogram(
            "ingest_http_request_duration_seconds", "Time to accept a POST /events (202 answers only).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5), registry=r)
        self.buffer_events = Gauge(
            "ingest_buffer_events", "Events waiting for storage, including the batch being inserted.", registry=r)
        self.buffer_capacity = Gauge(
            "ingest_buffer_capacity_events", "Buffer size at which POST /events answers 503.", registry=r)
        self.flush_duration = Histogram(
            "ingest_flush_duration_seconds", "Time of one batch insert into ClickHouse (successful or not).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0), registry=r)
        self.flush_rows = Histogram(
            "ingest_flush_rows", "Rows per successful batch insert.",
            buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 50000, 100000), registry=r)
        self.flush_failures = Counter(
            "ingest_flush_failures", "Batch inserts that failed and will be retried, by kind of failure.",
            ["kind"], registry=r)
        for kind in FAILURE_KINDS:  # every kind from the start, so rate() and alerts see a 0, not nothing
            self.flush_failures.labels(kind)
        self.last_flush_success = Gauge(
            "ingest_last_flush_success_timestamp_seconds", "Unix time of the last successful batch insert.",
            registry=r)
        self.slow_clients_refused = Counter(
            "ingest_slow_clients_refused",
            "Requests cut off for being slow, by reason: header_timeout, body_timeout (answered 408), evicted "
            "(closed mid-request at the connection limit to let a new connection in).", ["reason"], registry=r)
        for reason in SLOW_CLIENT_REASONS:
            self.slow_clients_refused.labels(reason)
        self.connections_refused = Counter(
            "ingest_connections_refused",
            "New connections closed at once because the connection limit was reached and every open connection "
            "was being answered.", registry=r)
        self.connections_open = Gauge(
            "ingest_connections_open", "Open client connections.", registry=r)
        self.connections_limit = Gauge(
            "ingest_connections_limit", "Most client connections open at once (INGEST_MAX_CONNECTIONS, or fewer if "
            "the open-files limit is lower).", registry=r)
        self.events_rechecked = Counter(
            "ingest_events_rechecked",
            "Events of an insert an engine restart cut off, by what storage held when asked: stored (not sent "
            "again) or missing (sent again).", ["found"], registry=r)
        for found in ("stored", "missing"):
            self.events_rechecked.labels(found)
        self.rollup_repairs = Counter(
            "ingest_rollup_repairs",
            "Rollups checked after a cut-off insert, by outcome: present, added (the insert's rows given to it), "
            "unsure (left alone and logged: run rebuild-rollups).", ["outcome"], registry=r)
        for outcome in ("present", "added", "unsure"):
            self.rollup_repairs.labels(outcome)
        self.idempotent_replays = Counter(
            "ingest_idempotent_replays",
            "POST /events answered with the first answer to their Idempotency-Key (nothing stored again).",
            registry=r)
        self.idempotency_keys = Gauge(
            "ingest_idempotency_keys", "Idempotency keys held (answered within the window).", registry=r)
        self.idempotency_oldest_key_age = Gauge(
            "ingest_idempotency_oldest_key_age_seconds",
            "Age of the oldest idempotency key held: how far back a repeat is still recognised.", registry=r)
        self.idempotency_keys_evicted = Counter(
            "ingest_idempotency_keys_evicted",
            "Idempotency keys forgotten before their window ended, to stay within INGEST_IDEMPOTENCY_MAX_KEYS.",
            registry=r)
        self.storage_up = Gauge(
            "ingest_storage_up", "1 if the last contact with ClickHouse succeeded, else 0.", registry=r)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
