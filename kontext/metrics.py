"""Prometheus metrics of one miner process (a registry per runtime, so tests never collide)."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_EDIT_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 12.5, 15, 20, 30, 60, 120)


class _LiveGauges(Collector):
    """Gauges read at scrape time from the runtime (queue depth), never stale."""

    def __init__(self, queue_depth: Callable[[], int]) -> None:
        self._queue_depth = queue_depth

    def collect(self):
        yield GaugeMetricFamily("kontext_queue_depth", "Jobs waiting in the queue.", value=self._queue_depth())


class Metrics:
    """Counters and histograms the worker, notifier and auth layers update."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs_submitted = Counter("kontext_jobs_submitted", "Jobs accepted.", registry=r)
        self.jobs_finished = Counter("kontext_jobs_finished", "Jobs finished, by outcome.", ["status"], registry=r)
        self.jobs_rejected = Counter("kontext_requests_rejected", "Requests refused, by error code.", ["code"],
                                     registry=r)
        self.edit_seconds = Histogram("kontext_edit_seconds", "Engine time of one edit, by worker.", ["worker"],
                                      buckets=_EDIT_BUCKETS, registry=r)
        self.jobs_run = Counter("kontext_jobs_run", "Jobs a worker ran to the end, by worker and outcome.",
                                ["worker", "status"], registry=r)
        self.store_retries = Counter("kontext_store_retries", "Jobs put back after the store refused a write.",
                                     registry=r)
        self.job_seconds = Histogram("kontext_job_seconds", "Submit-to-finish time of one job.",
                                     buckets=_EDIT_BUCKETS, registry=r)
        self.engine_load_seconds = Gauge("kontext_engine_load_seconds", "Time the model took to load, by worker.",
                                         ["worker"], registry=r)
        self.engine_ready = Gauge("kontext_engine_ready", "1 when the worker's engine is ready to edit.", ["worker"],
                                  registry=r)
        self.callbacks = Counter("kontext_callbacks", "Webhook outcomes.", ["status"], registry=r)
        self.auth_rejections = Counter("kontext_auth_rejections", "Signed requests refused, by reason.",
                                       ["reason"], registry=r)

    def watch_queue(self, queue_depth: Callable[[], int]) -> None:
        self.registry.register(_LiveGauges(queue_depth))

    def render(self) -> bytes:
        return generate_latest(self.registry)
