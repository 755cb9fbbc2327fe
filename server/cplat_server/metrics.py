"""Prometheus metrics of the service (one registry per app, so tests can run many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The service's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "cplat_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "cplat_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=_LATENCY,
            registry=r,
        )
        self.submitted = Counter("cplat_jobs_submitted", "Jobs accepted", registry=r)
        self.transitions = Counter(
            "cplat_job_transitions", "Job state changes", ["state"], registry=r
        )
        self.pending = Gauge("cplat_jobs_pending", "Jobs waiting", registry=r)
        self.running = Gauge("cplat_jobs_running", "Jobs placed or running", registry=r)
        self.nodes = Gauge("cplat_nodes", "Nodes by state", ["state"], registry=r)
        self.capacity = Gauge(
            "cplat_cluster_capacity", "Capacity of up nodes", ["resource"], registry=r
        )
        self.allocated = Gauge(
            "cplat_cluster_allocated", "Allocated resources", ["resource"], registry=r
        )
        self.cycle = Histogram(
            "cplat_scheduling_cycle_seconds",
            "Duration of one scheduling cycle",
            buckets=_LATENCY,
            registry=r,
        )
        self.store_write = Histogram(
            "cplat_store_write_seconds",
            "Duration of one group-committed job-state write",
            buckets=_LATENCY,
            registry=r,
        )
        self.schedule_to_run = Histogram(
            "cplat_submit_to_running_seconds",
            "Time from submission to all tasks running",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600),
            registry=r,
        )
        self.limit_rejections = Counter(
            "cplat_limit_rejections",
            "Requests answered 429 by an operator limit",
            ["limit"],
            registry=r,
        )
        self.open_streams = Gauge(
            "cplat_open_streams", "Event streams and log follows open", ["kind"], registry=r
        )
        for limit in ("streams", "submit_rate"):
            self.limit_rejections.labels(limit=limit)  # present at 0 before the first one
