"""Prometheus metrics. Labels are low-cardinality codes only, never request values."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    disable_created_metrics,
    generate_latest,
)

from proxy import __version__

NAMESPACE = "analytics_proxy"

# *_created series double the exposition for no use on dashboards or alerts.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """One registry per application, so tests and workers never share global state."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r, ns = self.registry, NAMESPACE
        self.received = Counter(
            "beacons_received", "Beacon requests received on /g/collect.", namespace=ns, registry=r
        )
        self.events = Counter(
            "events_received", "Events in received beacons.", namespace=ns, registry=r
        )
        self.accepted = Counter(
            "beacons_accepted",
            "Consented, sanitised beacons queued for forwarding.",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.dropped = Counter(
            "beacons_dropped",
            "Beacons not forwarded, by reason.",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.forwarded = Counter(
            "beacons_forwarded", "Beacons Google answered with 2xx.", namespace=ns, registry=r
        )
        self._lost = Counter(
            "beacons_lost",
            "Accepted beacons that could not be delivered, by reason.",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self._upstream = Counter(
            "upstream_requests",
            "Requests to Google by status class.",
            ["status_class"],
            namespace=ns,
            registry=r,
        )
        self.retries = Counter(
            "forward_retries", "Retried requests to Google.", namespace=ns, registry=r
        )
        self.queue_depth = Gauge(
            "queue_depth", "Beacons waiting in the in-memory outbox.", namespace=ns, registry=r
        )
        Info("build", "Version of the proxy.", namespace=ns, registry=r).info(
            {"version": __version__}
        )

    def drop(self, reason: str) -> None:
        self.dropped.labels(reason).inc()

    def lost(self, reason: str) -> None:
        self._lost.labels(reason).inc()

    def upstream(self, status_class: str) -> None:
        self._upstream.labels(status_class).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
