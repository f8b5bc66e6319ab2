"""Prometheus metrics of one app (its own registry, so that several apps can live in one process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram, generate_latest

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram("xmodal_request_seconds", "HTTP request latency by route and status",
                                  ["route", "method", "status"], buckets=BUCKETS, registry=self.registry)
        self.stage = Histogram("xmodal_search_stage_seconds", "time spent per search stage",
                               ["stage"], buckets=BUCKETS, registry=self.registry)
        self.version = Gauge("xmodal_index_version", "served index version", ["collection", "space"],
                             registry=self.registry)
        self.vectors = Gauge("xmodal_index_vectors", "vectors in the served index", ["collection", "space"],
                             registry=self.registry)
        self.bytes = Gauge("xmodal_index_bytes", "bytes of the served index files", ["collection", "space"],
                           registry=self.registry)

    def stages(self, timings: Any) -> None:
        self.stage.labels("encode").observe(timings.encode_ms / 1000)
        self.stage.labels("ann").observe(timings.ann_ms / 1000)
        self.stage.labels("sql").observe(timings.sql_ms / 1000)

    def index(self, collection: str, space: str, version: int, vectors: int, nbytes: int) -> None:
        self.version.labels(collection, space).set(version)
        self.vectors.labels(collection, space).set(vectors)
        self.bytes.labels(collection, space).set(nbytes)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
