"""Prometheus metrics. Labels are low-cardinality codes only, never request values."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from proxy import __version__

if TYPE_CHECKING:
    from proxy.consent.gate import ConsentVerdict
    from proxy.sanitize.sanitizer import ParameterCounts
    from proxy.state.pseudonym import WindowKey

NAMESPACE = "analytics_proxy"
# Set by ``serve --workers N`` (proxy/server/workers.py) before any worker imports this module.
MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
SALT_SOURCES = ("memory", "redis", "local")
# The consent gate's reasons (proxy.consent.gate.ConsentVerdict.reason) and regimes.
CONSENT_VERDICTS = (
    "granted", "implied", "default", "denied", "gpc", "dnt", "no_consent", "consent_error"
)
REGIMES = ("opt_in", "opt_out", "other", "unknown")
# Label values exposed at 0 from the start, so rates and alerts have a series to work on.
ACCEPT_REASONS = ("granted", "implied", "default")
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "error")
LOST_REASONS = (
    "rejected", "forward_error", "retries_exhausted", "shutdown", "outbox_unreadable",
)
TAG_OUTCOMES = ("fresh", "stale", "not_modified", "unavailable", "not_found")
TRACKER_OUTCOMES = ("served", "not_modified", "not_found")
TAG_FETCH_RESULTS = ("ok", "error")
SPILL_REASONS = ("queue_full", "retries_exhausted", "shutdown")
# What became of a Measurement Protocol request (proxy/server/mp.py): accepted, answered
# locally (debug), or the reason it was refused or dropped.
MP_OUTCOMES = (
    "accepted", "debug", "bad_token", "unknown_tid", "malformed", "too_large", "timeout",
    "client_aborted", "no_consent", "denied", "nothing_left", "pseudonym_unavailable",
    "sanitize_error", "queue_full", "internal_error",
)
NO_SOURCE = "none"  # no source decided: the regime default, or a source that failed
# Where the outbound hit places the visitor (proxy.pipeline.Outcome.location_level).
LOCATION_LEVELS = ("city", "region", "country", "truncated", "omitted")
# Google's collection endpoint answers in tens of milliseconds from the EU; the tail up to
# upstream.timeout (5 s by default) is what an alert on slowness looks at.
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# *_created series double the exposition for no use on dashboards or alerts.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """One registry per application, so tests and workers never share global state.

    ``primary``: this process reports readings of state every worker shares (the Redis
    outbox's length); with ``serve --workers N`` only worker 0 is, so sums stay right."""

    def __init__(self, registry: CollectorRegistry | None = None, *, primary: bool = True) -> None:
        self.registry = registry or CollectorRegistry()
        self.primary = primary
        self._refreshers: list[Callable[[], None]] = []
        self._parameter_counts: list[ParameterCounts] = []
        # Per-beacon counts kept as plain integers until refresh(): cheaper than a Prometheus
        # counter's lock (and file write across workers) on every beacon.
        self._consent_counts: dict[tuple[str | None, str, str], int] = {}
        self._level_counts: dict[str, int] = {}
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
        for reason in ACCEPT_REASONS:
            self.accepted.labels(reason)
        self.forwarded = Counter(
            "beacons_forwarded", "Beacons Google answered with 2xx.", namespace=ns, registry=r
        )
        self.events_forwarded = Counter(
            "events_forwarded",
            "Events in beacons Google answered with 2xx.",
            namespace=ns,
            registry=r,
        )
        # Consent: who decided and how; and the same decisions by the visitor's regime
        # (two counters, not one with three labels, to keep each small).
        self._consent = Counter(
            "consent_decisions",
            "Consent decisions, by the source that settled them (a consent source type, gpc, "
            "dnt, or none: the regime default) and verdict.",
            ["source", "verdict"],
            namespace=ns,
            registry=r,
        )
        self._consent_children: dict[tuple[str | None, str], Counter] = {}
        for source, verdict in (
            ("gpc", "gpc"),
            ("dnt", "dnt"),
            *((NO_SOURCE, v) for v in ("default", "no_consent", "consent_error")),
        ):
            self._bind_consent(source, verdict)
        self._regime = Counter(
            "consent_regime_decisions",
            "Consent decisions, by the visitor's regime and the verdict.",
            ["regime", "verdict"],
            namespace=ns,
            registry=r,
        )
        self._regime_children = {
            (regime, verdict): self._regime.labels(regime, verdict)
            for regime in REGIMES
            for verdict in CONSENT_VERDICTS
        }
        self._location = Counter(
            "location_level",
            "Beacons accepted for forwarding, by where the hit places the visitor: "
            "city, region or country (a representative address), truncated address, omitted.",
            ["level"],
            namespace=ns,
            registry=r,
        )
        self._levels = {level: self._location.labels(level) for level in LOCATION_LEVELS}
        # Counted by the sanitiser in plain integers, moved here by refresh().
        self._parameters = Counter(
            "parameters_changed",
            "Beacon parameters the sanitiser dropped, replaced, scrubbed or generalised, "
            "by rule and action.",
            ["rule", "action"],
            namespace=ns,
            registry=r,
        )
        self._lost = Counter(
            "beacons_lost",
            "Accepted beacons that could not be delivered, by reason.",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.unconfirmed = Counter(
            "beacons_unconfirmed",
            "Beacons sent to Google whose answer never came (timeout, connection closed after "
            "sending): not sent again, since GA4 would count a repeat twice.",
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
        self._upstream_children: dict[str, Any] = {}
        for status_class in STATUS_CLASSES:
            self._upstream.labels(status_class)
        for reason in LOST_REASONS:
            self._lost.labels(reason)
        self.retries = Counter(
            "forward_retries", "Retried requests to Google.", namespace=ns, registry=r
        )
        self.upstream_duration = Histogram(
            "upstream_request_duration_seconds",
            "Time for one request to Google, until its answer or its failure.",
            namespace=ns,
            registry=r,
            buckets=UPSTREAM_BUCKETS,
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
        # Configuration, so an alert compares the salt's age with the window it should have.
        self.salt_rotation = Gauge(
            "salt_rotation_seconds",
            "Configured length of a pseudonym salt's window (privacy.pseudonym.rotation).",
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
        # The outbox (proxy/delivery/). Alert on depth approaching max_entries: past the cap
        # the oldest entries are trimmed, and that is counted too, never silent.
        # Workers add up: each reports what it holds in memory, and only the primary the
        # shared Redis stream (and its cap), so the stream is counted once.
        self.outbox_depth = Gauge(
            "outbox_depth",
            "Beacons held in the outbox (Redis stream plus memory) awaiting delivery.",
            namespace=ns,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.outbox_max_entries = Gauge(
            "outbox_max_entries",
            "The outbox's cap.",
            namespace=ns,
            registry=r,
            multiprocess_mode="livesum",
        )
        self._spilled = Counter(
            "beacons_spilled",
            "Beacons put into the outbox instead of being delivered now, by reason.",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        for reason in SPILL_REASONS:
            self._spilled.labels(reason)
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

        # Server-side events (proxy/mp/): counted apart from browser beacons; once accepted
        # they share the queue, outbox and upstream counters (beacons_forwarded, ...).
        self.mp_requests = Counter(
            "mp_requests",
            "Measurement Protocol requests (/mp/collect, /debug/mp/collect), by outcome: "
            "accepted, debug, or why refused or dropped.",
            ["outcome"],
            namespace=ns,
            registry=r,
        )
        for outcome in MP_OUTCOMES:
            self.mp_requests.labels(outcome)

        # The privacy audit trail (proxy/observe/audit/): records stored, or dropped because the
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

        # The first-party tag (proxy/tag/): requests for it, fetches from Google, rewrites
        # that no longer found what they expect in Google's file.
        self.tag_requests = Counter(
            "tag_requests",
            "Requests for the first-party tag, by outcome: fresh, stale (served while "
            "refreshed or while Google is unreachable), not_modified, unavailable (cold cache, "
            "origin unreachable), not_found (an id not configured).",
            ["outcome"],
            namespace=ns,
            registry=r,
        )
        for outcome in TAG_OUTCOMES:
            self.tag_requests.labels(outcome)
        self.tracker_requests = Counter(
            "tracker_requests",
            "Requests for the proxy's own tracker /t.js, by outcome: served, not_modified, "
            "not_found (an id not configured).",
            ["outcome"],
            namespace=ns,
            registry=r,
        )
        for outcome in TRACKER_OUTCOMES:
            self.tracker_requests.labels(outcome)
        self.tag_fetches = Counter(
            "tag_fetches",
            "Fetches of the tag from its origin (Google), by result.",
            ["result"],
            namespace=ns,
            registry=r,
        )
        for result in TAG_FETCH_RESULTS:
            self.tag_fetches.labels(result)
        self.tag_rewrite_misses = Counter(
            "tag_rewrite_misses",
            "Tag rewrite rules that found nothing in a fetched tag (Google changed the file).",
            ["rule"],
            namespace=ns,
            registry=r,
        )

    def init_drop_reasons(self, reasons: Iterable[str]) -> None:
        """Expose every reason a beacon can be dropped for (proxy.pipeline.DROP_REASONS)."""
        for reason in reasons:
            self.dropped.labels(reason)

    def drop(self, reason: str) -> None:
        self.dropped.labels(reason).inc()

    def lost(self, reason: str, count: int = 1) -> None:
        self._lost.labels(reason).inc(count)

    def spilled(self, reason: str, count: int = 1) -> None:
        self._spilled.labels(reason).inc(count)

    def upstream(self, status_class: str) -> None:
        # Per request: the labelled child looked up once per class, not per call.
        child = self._upstream_children.get(status_class)
        if child is None:
            child = self._upstream_children[status_class] = self._upstream.labels(status_class)
        child.inc()

    def init_consent(self, sources: Iterable[str]) -> None:
        """Expose every (source, verdict) the configured consent sources can produce."""
        for source in sources:
            for verdict in ("granted", "implied", "denied"):
                self._bind_consent(source, verdict)

    def _bind_consent(self, source: str, verdict: str) -> Counter:
        child = self._consent_children[(source, verdict)] = self._consent.labels(source, verdict)
        if source == NO_SOURCE:
            self._consent_children[(None, verdict)] = child
        return child

    def consent(self, decision: ConsentVerdict) -> None:
        """Count one decision of the consent gate. Per beacon, so only a dict increment
        here; ``refresh`` moves the counts into both counters."""
        key = (decision.source, decision.reason, decision.regime.value)
        self._consent_counts[key] = self._consent_counts.get(key, 0) + 1

    def location(self, level: str) -> None:
        """Count one accepted beacon's location level ("": nothing sent, not counted)."""
        if level:
            self._level_counts[level] = self._level_counts.get(level, 0) + 1

    def _move_counts(self) -> None:
        # Source, reason, regime and level are codes from the configuration and the
        # pipeline, so even an unforeseen one keeps the label sets bounded.
        consent, self._consent_counts = self._consent_counts, {}
        for (source, reason, regime), count in consent.items():
            child = self._consent_children.get((source, reason))
            if child is None:
                child = self._bind_consent(source or NO_SOURCE, reason)
            child.inc(count)
            child = self._regime_children.get((regime, reason))
            if child is None:
                child = self._regime_children[(regime, reason)] = self._regime.labels(
                    regime, reason
                )
            child.inc(count)
        levels, self._level_counts = self._level_counts, {}
        for level, count in levels.items():
            child = self._levels.get(level)
            if child is None:
                child = self._levels[level] = self._location.labels(level)
            child.inc(count)
        for counts in self._parameter_counts:
            for (rule, action), count in counts.take():
                self._parameters.labels(rule, action).inc(count)

    def track_parameters(self, counts: ParameterCounts) -> None:
        """Move the sanitiser's counts into ``parameters_changed`` on every refresh."""
        for rule, action in counts.labels[1:]:
            self._parameters.labels(rule, action)
        self._parameter_counts.append(counts)

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
        """Update values that are sampled rather than counted, and move in the counts kept
        outside Prometheus (called once a second, at shutdown, and at every scrape)."""
        for refresh in self._refreshers:
            refresh()
        self._move_counts()

    def exposition(self) -> bytes:
        # Exact at scrape time for this process; other workers' within a second.
        self.refresh()
        if MULTIPROC_DIR:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, MULTIPROC_DIR)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
