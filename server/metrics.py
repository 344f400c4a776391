"""Prometheus metrics: HTTP traffic plus the scan engine's own figures."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServerMetrics:
    """One registry per app, so tests can build many apps in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # process_resident_memory_bytes, CPU seconds, open fds (Linux /proc).
        ProcessCollector(registry=r)
        self.requests = Counter(
            "lorif_http_requests", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "lorif_http_request_seconds",
            "HTTP latency",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("lorif_queue_depth", "Queries waiting for a scan", registry=r)
        self.batch_size = Histogram(
            "lorif_batch_size",
            "Queries answered per scan",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.scan_seconds = Histogram(
            "lorif_scan_seconds", "Seconds per scan", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.scan_wait_seconds = Counter(
            "lorif_scan_wait_seconds", "Seconds the scorer waited for data", registry=r
        )
        self.scan_bytes = Counter("lorif_scan_bytes", "Index bytes scanned", registry=r)
        self.scan_rows = Counter("lorif_scan_rows", "Index rows scanned", registry=r)
        self.scan_blocks = Counter("lorif_scan_blocks", "Row blocks scanned", registry=r)
        self.scan_throughput = Gauge(
            "lorif_scan_bytes_per_second", "Last scan's throughput", registry=r
        )
        self.featurize_seconds = Histogram(
            "lorif_featurize_seconds",
            "Query gradient seconds",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rejections = Counter("lorif_rejections", "Refused requests", ["reason"], registry=r)
        self.index_info = Info("lorif_index", "The served index", registry=r)
        self.ready = Gauge("lorif_ready", "1 when the model and index are loaded", registry=r)
