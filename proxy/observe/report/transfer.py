"""The transfer report: what leaves for Google, in what form, to which endpoint, under which
consent rule, and how each of CNIL's proxy conditions is met (privacy-requirements.md §1, §5).

The report holds no visitor data: it is built from configuration and synthetic probes only.
``build_report`` returns a ``Report``; ``to_json``, ``to_markdown`` (for a DPIA or record of
processing) and ``to_html`` (a standalone page) render the same content.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgspec

from proxy import __version__
from proxy.config import Config
from proxy.observe.report import sections
from proxy.observe.report.conditions import Condition, conditions
from proxy.observe.report.document import document, html_page, markdown
from proxy.observe.report.facts import derive_facts
from proxy.observe.report.forwarded import (
    Field,
    NeverItem,
    forwarded_fields,
    header_fields,
    never_forwarded,
)
from proxy.observe.report.sections import Collision


@dataclass(frozen=True)
class Report:
    version: str
    fingerprint: str
    profile: str
    measurement_ids: tuple[str, ...]
    endpoint: dict[str, Any]
    consent: dict[str, Any]
    pseudonym: dict[str, Any]
    location: dict[str, Any]
    forwarded_fields: tuple[Field, ...]
    headers: tuple[Field, ...]
    never_forwarded: tuple[NeverItem, ...]
    cnil_conditions: tuple[Condition, ...]
    framing: tuple[dict[str, Any], ...]
    urls: dict[str, Any]
    device: dict[str, Any]
    collisions: tuple[Collision, ...] = field(default=())
    measurement_protocol: dict[str, Any] = field(default_factory=dict)

    @property
    def region(self) -> str:
        return str(self.endpoint["region"])

    def to_json(self) -> dict[str, Any]:
        def coll(c: Collision) -> dict[str, Any]:
            return {
                "daily_visitors": c.daily_visitors,
                "basis": c.basis,
                "visitors_per_window": c.visitors_per_window,
                "p_visitor_shares_pseudonym": c.p_shared,
                "expected_colliding_visitors": c.colliding,
                "expected_distinct_pseudonyms": c.distinct,
            }

        return {
            "report": "analytics-proxy transfer report",
            "version": self.version,
            "policy_fingerprint": self.fingerprint,
            "profile": self.profile,
            "measurement_ids": list(self.measurement_ids),
            "endpoint": self.endpoint,
            "region": self.region,
            "consent": self.consent,
            "pseudonym": {
                **self.pseudonym,
                "collision": coll(self.collisions[0]),
                "collision_table": [coll(c) for c in self.collisions],
            },
            "location": self.location,
            "urls": self.urls,
            "device": self.device,
            "cnil_conditions": [
                {"id": c.id, "title": c.title, "met": c.met, "why": c.why}
                for c in self.cnil_conditions
            ],
            "framing": list(self.framing),
            "measurement_protocol": self.measurement_protocol,
            "forwarded_fields": [_field_json(f) for f in self.forwarded_fields],
            "forwarded_headers": [_field_json(f) for f in self.headers],
            "never_forwarded": [
                {
                    "item": n.item,
                    "kind": n.kind,
                    "holds": n.holds,
                    "why": n.why,
                    "params": list(n.params),
                    "prefixes": list(n.prefixes),
                    "allowed": list(n.allowed),
                    "passes": list(n.passes),
                }
                for n in self.never_forwarded
            ],
        }

    def to_markdown(self) -> str:
        return markdown(document(self))

    def to_html(self) -> str:
        return html_page(document(self), "Transfer report: analytics-proxy → Google Analytics 4")


def _field_json(f: Field) -> dict[str, Any]:
    return {
        "label": f.label,
        "params": list(f.params),
        "treatment": f.treatment,
        "rule": f.rule,
        "form": f.form,
        "values": f.values,
    }


def _fingerprint(config: Config) -> str:
    # The parts the report derives from, without secrets (admin token, Redis URL).
    parts = {
        "privacy": config.privacy,
        "consent": config.consent,
        "measurement_ids": config.measurement_ids,
        "allowed_origins": config.allowed_origins,
        "upstream": config.upstream.url,
        "internal_traffic": config.internal_traffic,
        "geo": bool(config.geo.database),
        "measurement_protocol": config.measurement_protocol,
    }
    return hashlib.sha256(msgspec.json.encode(parts)).hexdigest()[:16]


def build_report(config: Config, daily_visitors: int | None = None,
                 observed: int | None = None) -> Report:
    """The report for ``config``. ``daily_visitors``: the volume to state collisions at;
    ``observed``: the proxy's own measured daily volume, when it has one. Neither: an
    illustrative volume, labelled as such."""
    for name, value in (("daily_visitors", daily_visitors), ("observed", observed)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1")
    facts = derive_facts(config)
    collisions = sections.collisions(config, daily_visitors, observed)
    endpoint = sections.endpoint(config)
    return Report(
        version=__version__,
        fingerprint=_fingerprint(config),
        profile=config.privacy.profile,
        measurement_ids=tuple(config.measurement_ids),
        endpoint=endpoint,
        consent=sections.consent(config),
        pseudonym=sections.pseudonym(config, collisions[0]),
        location=sections.location(config),
        forwarded_fields=forwarded_fields(facts),
        headers=header_fields(),
        never_forwarded=never_forwarded(facts),
        cnil_conditions=conditions(facts, collisions[0]),
        framing=sections.framing(endpoint, config),
        urls=sections.urls(facts),
        device=sections.device(facts),
        collisions=collisions,
        measurement_protocol=sections.measurement_protocol(config),
    )
