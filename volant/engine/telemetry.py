"""Prometheus metrics of one engine: create latency, errors by code, and state at scrape time.

Each Telemetry has a registry of its own (no process-global default registry), so two
engines in one process (tests) never share counters.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from volant.model import VMStatus

# Create returns once the hypervisor answers (about 0.1 s here) or its guest is healthy.
CREATE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Telemetry:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, version: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.create_seconds = Histogram(
            "volant_vm_create_seconds",
            "Time a successful VM create took, until the VM was starting or running",
            buckets=CREATE_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "volant_api_errors",
            "Errors answered to callers, by front-end and error code",
            ("api", "code"),
            registry=self.registry,
        )
        self.vms = Gauge("volant_vms", "VMs by status", ("status",), registry=self.registry)
        self.subscribers = Gauge(
            "volant_event_subscribers", "Live event subscribers", registry=self.registry
        )
        self.pool = Gauge(
            "volant_ip_pool_addresses", "IP pool addresses", ("state",), registry=self.registry
        )
        info = Gauge("volant_info", "volantd version", ("version",), registry=self.registry)
        info.labels(version=version or "unknown").set(1)

    def error(self, api: str, code: str) -> None:
        self.errors.labels(api=api, code=code).inc()

    def render(
        self, vms_by_status: Mapping[str, int], subscribers: int, leased: int, total: int
    ) -> bytes:
        """The text exposition format, with the state gauges set from the given snapshot."""
        for status in VMStatus:
            self.vms.labels(status=status.value).set(vms_by_status.get(status.value, 0))
        self.subscribers.set(subscribers)
        self.pool.labels(state="leased").set(leased)
        self.pool.labels(state="free").set(total - leased)
        return bytes(generate_latest(self.registry))
