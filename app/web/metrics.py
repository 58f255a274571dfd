"""Prometheus metrics, one registry per application instance (tests build many apps)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: the `method` label's values; any other verb a client sends is counted as "other"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in HTTP_METHODS else "other"


class Metrics:
    def __init__(self, gallery_sizes):
        self.registry = CollectorRegistry()
        self.requests = Counter("nessa_http_requests_total", "HTTP requests",
                                ["method", "endpoint", "status"], registry=self.registry)
        self.latency = Histogram("nessa_http_request_seconds", "HTTP request latency",
                                 ["method", "endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.embedding = Histogram("nessa_embedding_seconds", "Time to embed one query or enrollment",
                                   ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_IndexSizeCollector(gallery_sizes))


class _IndexSizeCollector:
    """Reads index sizes at scrape time instead of tracking every change."""

    def __init__(self, gallery_sizes):
        self._gallery_sizes = gallery_sizes

    def collect(self):
        family = GaugeMetricFamily("nessa_index_profiles", "Profiles in the in-memory index", labels=["space"])
        for space, size in sorted(self._gallery_sizes().items()):
            family.add_metric([space], size)
        yield family
