"""Prometheus metrics. Labels are low-cardinality codes only, never request values."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from proxy import __version__

if TYPE_CHECKING:
    from proxy.pseudonym import WindowKey

NAMESPACE = "analytics_proxy"
# Set by ``serve --workers N`` (proxy/workers.py) before any worker imports this module.
MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
SALT_SOURCES = ("memory", "redis", "local")

# *_created series double the exposition for no use on dashboards or alerts.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """One registry per application, so tests and workers never share global state."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._refreshers: list[Callable[[], None]] = []
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
        # Each worker has its own queue: the sum is the process group's.
        self.queue_depth = Gauge(
            "queue_depth",
            "Beacons waiting in the in-memory queue.",
            namespace=ns,
            registry=r,
            multiprocess_mode="livesum",
        )
        # A gauge rather than an Info metric: Info does not work across workers.
        Gauge(
            "build_info",
            "Version of the proxy.",
            ["version"],
            namespace=ns,
            registry=r,
            multiprocess_mode="livemax",
        ).labels(__version__).set(1)
        self.salt_age = Gauge(
            "salt_age_seconds",
            "Seconds since the window of the pseudonym salt in use began.",
            namespace=ns,
            registry=r,
            multiprocess_mode="livemax",
        )
        self._salt_source = Gauge(
            "salt_source",
            "1 for where the pseudonym salt in use comes from; local: the shared store was "
            "unreachable and this replica's pseudonyms differ from the others'.",
            ["source"],
            namespace=ns,
            registry=r,
            multiprocess_mode="livemax",  # any worker on a local salt shows as local
        )
        for source in SALT_SOURCES:
            self._salt_source.labels(source)  # every source is exposed, at 0 until in use
        self.geo_age = Gauge(
            "geo_database_age_seconds",
            "Seconds since the geo database in use was built.",
            namespace=ns,
            registry=r,
            multiprocess_mode="livemax",
        )
        # The outbox (proxy/spill.py). Alert on depth approaching max_entries: past the cap
        # the oldest entries are trimmed, and that is counted too, never silent.
        # Every worker reads the same shared stream: the largest reading, not their sum.
        self.outbox_depth = Gauge(
            "outbox_depth",
            "Beacons held in the outbox (Redis stream plus memory) awaiting delivery.",
            namespace=ns,
            registry=r,
            multiprocess_mode="livemax",
        )
        self.outbox_max_entries = Gauge(
            "outbox_max_entries",
            "The outbox's cap.",
            namespace=ns,
            registry=r,
            multiprocess_mode="livemax",
        )
        self._spilled = Counter(
            "beacons_spilled",
            "Beacons put into the outbox instead of being delivered now, by reason.",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.expired = Counter(
            "beacons_expired",
            "Outbox entries discarded as older than state.outbox_max_age.",
            namespace=ns,
            registry=r,
        )
        self.outbox_delivered = Counter(
            "outbox_delivered",
            "Outbox entries delivered to Google (including final 4xx, counted as rejected).",
            namespace=ns,
            registry=r,
        )
        self.outbox_claimed = Counter(
            "outbox_claimed",
            "Outbox entries taken over after their consumer left them idle (claim_idle).",
            namespace=ns,
            registry=r,
        )
        self.outbox_trimmed = Counter(
            "outbox_trimmed",
            "Outbox entries removed because the outbox reached its cap.",
            namespace=ns,
            registry=r,
        )

        # The privacy audit trail (proxy/audit.py): records stored, or dropped because the
        # writer's queue was full or Redis unreachable. Never waited for by a beacon.
        self.audit_records = Counter(
            "audit_records",
            "Audit trail records, by outcome: written, or dropped (queue full, store down).",
            ["outcome"],
            namespace=ns,
            registry=r,
        )
        for outcome in ("written", "dropped"):
            self.audit_records.labels(outcome)

    def drop(self, reason: str) -> None:
        self.dropped.labels(reason).inc()

    def lost(self, reason: str, count: int = 1) -> None:
        self._lost.labels(reason).inc(count)

    def spilled(self, reason: str, count: int = 1) -> None:
        self._spilled.labels(reason).inc(count)

    def upstream(self, status_class: str) -> None:
        self._upstream.labels(status_class).inc()

    def observe_salt(self, key: WindowKey) -> None:
        """Record the source of a newly active salt (called when the key changes)."""
        for source in SALT_SOURCES:
            self._salt_source.labels(source).set(1 if source == key.source else 0)

    def sample(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """Read ``gauge`` from ``read`` at scrape time (salt age, geo database age), so
        beacons never pay for it."""
        if MULTIPROC_DIR:
            # Across workers values live in files: a scrape cannot call into another process.
            self._refreshers.append(lambda: gauge.set(read()))
        else:
            gauge.set_function(read)

    def refresh(self) -> None:
        """Update values that are sampled rather than counted (called once a second)."""
        for refresh in self._refreshers:
            refresh()

    def exposition(self) -> bytes:
        if MULTIPROC_DIR:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, MULTIPROC_DIR)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
