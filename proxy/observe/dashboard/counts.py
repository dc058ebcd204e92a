"""Beacon totals for the dashboard, read from the counters ``Metrics`` already keeps (of every
worker under ``--workers``): the beacon path pays nothing for them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.metrics_core import Metric

from proxy.observe import metrics as metrics_module
from proxy.observe.metrics import NAMESPACE, Metrics

_COUNTERS = {
    "received": f"{NAMESPACE}_beacons_received",
    "accepted": f"{NAMESPACE}_beacons_accepted",
    "forwarded": f"{NAMESPACE}_beacons_forwarded",
    "dropped": f"{NAMESPACE}_beacons_dropped",
    "lost": f"{NAMESPACE}_beacons_lost",
}


@dataclass(frozen=True, slots=True)
class Totals:
    """Beacon totals since start-up (of every worker under ``--workers``)."""

    received: int
    accepted: int
    forwarded: int
    lost: int
    dropped: dict[str, int]

    def as_json(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "accepted": self.accepted,
            "forwarded": self.forwarded,
            "lost": self.lost,
            "dropped": sum(self.dropped.values()),
            "dropped_by_reason": dict(sorted(self.dropped.items(), key=lambda kv: -kv[1])),
        }


def read_totals(metrics: Metrics) -> Totals:
    """The counters as /metrics would show them: across workers in multiprocess mode."""
    if metrics_module.MULTIPROC_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, metrics_module.MULTIPROC_DIR)  # type: ignore[no-untyped-call]
        families: Iterable[Metric] = registry.collect()
    else:
        families = metrics.registry.collect()
    wanted = {name: key for key, name in _COUNTERS.items()}
    sums = dict.fromkeys(_COUNTERS, 0)
    dropped: dict[str, int] = {}
    for family in families:
        key = wanted.get(family.name)
        if key is None:
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            sums[key] += int(sample.value)
            if key == "dropped" and sample.value:  # every reason is exposed, most at 0
                reason = sample.labels.get("reason", "")
                dropped[reason] = dropped.get(reason, 0) + int(sample.value)
    return Totals(sums["received"], sums["accepted"], sums["forwarded"], sums["lost"], dropped)
