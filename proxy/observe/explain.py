"""``explain``: one beacon (or many) through exactly the ``serve`` pipeline, shown to a person.

The privacy lead's main tool: what was decided and why, what would leave for Google, and
each parameter's before → after with the rule that changed it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from multidict import CIMultiDict

from proxy.config import DRY_RUN, EU_ENDPOINT, Config
from proxy.delivery.outbound import MEASUREMENT_PROTOCOL
from proxy.ingest.client import ClientAddressResolver, parse_address
from proxy.ingest.cookies import join_cookie_lines
from proxy.location.geo import GeoDatabase
from proxy.location.geo_index import Representatives, load_or_build
from proxy.mp.ingest import DETAIL as MP_DETAIL
from proxy.mp.ingest import MeasurementProtocol
from proxy.pipeline import IncomingRequest, Outcome, Pipeline
from proxy.sanitize.policy import Action
from proxy.state.pseudonym import Pseudonymizer
from proxy.state.salts import MemoryState
from proxy.tag.endpoints import is_ads_endpoint


@dataclass
class BeaconInput:
    """One beacon as the privacy lead describes it (the ``--jsonl`` line shape)."""

    url: str
    method: str = "POST"
    body: str = ""
    cookie: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    country: str | None = None
    region: str | None = None
    client_ip: str | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> BeaconInput:
        headers = {str(k): str(v) for k, v in (data.get("headers") or {}).items()}
        return cls(
            url=str(data["url"]),
            method=str(data.get("method") or "POST"),
            body=str(data.get("body") or ""),
            cookie=data.get("cookie"),
            headers=headers,
            country=data.get("country"),
            region=data.get("region"),
            client_ip=data.get("client_ip"),
        )

    def incoming(self, resolver: ClientAddressResolver | None = None) -> IncomingRequest:
        """``resolver``: ``client_ip`` is then the socket peer, and the forwarding headers
        given are walked over ``trusted_proxies`` exactly as serve walks them."""
        headers = {k.lower(): v for k, v in self.headers.items()}
        # The cookie given on its own and any Cookie header are all read, as serve reads
        # every Cookie line: a denial in any of them wins.
        cookies = [v for k, v in self.headers.items() if k.lower() == "cookie"]
        return IncomingRequest(
            query=urlsplit(self.url).query,
            body=self.body.encode() if self.method.upper() == "POST" else b"",
            cookie=join_cookie_lines([self.cookie or "", *cookies]),
            user_agent=headers.get("user-agent"),
            gpc=headers.get("sec-gpc", "").strip() == "1",
            dnt=headers.get("dnt", "").strip() == "1",
            client_ip=resolver.resolve(self.client_ip, CIMultiDict(self.headers))
            if resolver is not None
            else parse_address(self.client_ip),
            country=self.country,
            region=self.region,
            origin=headers.get("origin"),
        )


def har_beacons(har: Mapping[str, Any]) -> Iterator[BeaconInput]:
    """Every ``/g/collect`` request of a browser HAR export, and every request to an
    advertising endpoint the tag may call (which serve answers and never forwards)."""
    for entry in har.get("log", {}).get("entries", []):
        req = entry.get("request", {})
        url = req.get("url", "")
        path = urlsplit(url).path
        if not (path.endswith("/g/collect") or is_ads_endpoint(path)):
            continue
        headers = {
            h["name"]: h["value"]
            for h in req.get("headers", [])
            if not h.get("name", "").startswith(":") and h.get("name", "").lower() != "cookie"
        }
        cookie = join_cookie_lines(
            h["value"] for h in req.get("headers", []) if h.get("name", "").lower() == "cookie"
        )
        if cookie is None and req.get("cookies"):
            cookie = "; ".join(f"{c['name']}={c['value']}" for c in req["cookies"])
        yield BeaconInput(
            url=url,
            method=req.get("method", "GET"),
            body=(req.get("postData") or {}).get("text", ""),
            cookie=cookie,
            headers=headers,
        )


class Explainer:
    """A pipeline built from the configuration, with a salt of its own."""

    def __init__(self, config: Config) -> None:
        pseudo = config.privacy.pseudonym
        geo = GeoDatabase(config.geo.database) if config.geo.database else None
        self._location = config.privacy.location
        representatives = None
        if geo is not None and self._location.mode in ("country", "mesh"):
            # Built once per database version and cached (the first time takes seconds).
            representatives = Representatives(load_or_build(geo.path, config.geo.index_cache))
        self._pipeline = Pipeline(
            config,
            Pseudonymizer(MemoryState(), bits=pseudo.bits, rotation=pseudo.rotation_seconds),
            geo=geo,
            representatives=representatives,
        )
        self._upstream = EU_ENDPOINT if config.upstream.url == DRY_RUN else config.upstream.url
        # Server-side events: a URL whose path ends in /mp/collect, its JSON as the body.
        self._mp = MeasurementProtocol(config, self._pipeline)
        self._mp_upstream = config.measurement_protocol.upstream_url
        self._resolver = ClientAddressResolver(config.trusted_proxies, config.forwarded_header)

    async def explain(self, beacon: BeaconInput) -> Outcome:
        url = urlsplit(beacon.url)
        if url.path.endswith("/debug/mp/collect"):
            # As serve answers it: validation messages, nothing is forwarded.
            return Outcome(forward=False, reason="debug", detail=MP_DETAIL)
        if url.path.endswith("/mp/collect"):
            # The token is not checked: explain runs on the operator's own input.
            tid = parse_qs(url.query).get("measurement_id", [""])[0]
            result = await self._mp.process(tid, beacon.body.encode(), trace=True)
            return result.outcome
        if is_ads_endpoint(url.path):
            # As serve answers it: the tag is told 204, nothing is forwarded.
            return Outcome(forward=False, reason="ads_endpoint")
        return await self._pipeline.process(beacon.incoming(self._resolver), trace=True)

    def to_json(self, outcome: Outcome) -> dict[str, Any]:
        forwarded = None
        if outcome.outbound is not None:
            out = outcome.outbound
            mp = out.kind == MEASUREMENT_PROTOCOL  # sent with api_secret, not shown here
            forwarded = {
                "url": f"{self._mp_upstream if mp else self._upstream}?{out.query}",
                "body": out.body,
                "headers": out.headers(),
            }
        consent = outcome.consent
        return {
            "decision": "forward" if outcome.forward else "drop",
            "reason": outcome.reason,
            "detail": outcome.detail or None,
            "source": consent.source if consent else None,
            "regime": outcome.regime.value if outcome.regime else None,
            "place": (
                {"country": outcome.place.country, "region": outcome.place.region}
                if outcome.place
                else None
            ),
            "consent": {name: v.value for name, v in consent.verdicts} if consent else {},
            "location": self._located(outcome),
            "forwarded": forwarded,
            "changes": [
                {
                    "scope": c.scope,
                    "param": c.param,
                    "action": c.action.value,
                    "rule": c.rule,
                    "before": c.before,
                    "after": c.after,
                    "detail": list(c.detail),
                }
                for c in outcome.changes
            ],
        }

    def _located(self, outcome: Outcome) -> dict[str, Any] | None:
        """Where the forwarded hit places the visitor, and why not finer."""
        if not outcome.forward:
            return None
        mode, level = self._location.mode, outcome.location_level
        sent = next(
            # _uip on a beacon; ip_override on a Measurement Protocol request
            (c.after for c in outcome.changes
             if c.param in ("_uip", "ip_override") and c.scope == "query"), None
        )
        if sent is None and outcome.detail == MP_DETAIL:
            why = "no ip_override in the request (never the back end's own address)"
        elif sent is None and mode == "truncated":
            # serve always has the peer's address; explain has one only when it is given.
            why = "no visitor address given to explain: --client-ip"
        elif mode == "mesh" and level != "city":
            why = f"finer cells have fewer than k={self._location.k} visitors in this run"
            if level == "omitted":
                why = f"every cell has fewer than k={self._location.k} visitors in this run"
        elif mode in ("country", "mesh") and level == "omitted":
            why = "no country found for the address"
        else:
            why = {
                "omit": "location mode omit",
                "truncated": f"the network part only, IPv4 /{self._location.ipv4_prefix} "
                f"or IPv6 /{self._location.ipv6_prefix}",
            }.get(mode, "the cell's representative address, the same for all its visitors")
        return {"mode": mode, "level": level, "sent": sent, "why": why}

    def to_text(self, outcome: Outcome, color: bool = False) -> str:
        return "\n".join(_text_lines(self.to_json(outcome), color))


_ACTION_COLOR = {
    Action.DROPPED.value: "31",
    Action.REPLACED.value: "35",
    Action.SCRUBBED.value: "33",
    Action.GENERALISED.value: "33",
    Action.FORCED.value: "36",
    Action.KEPT.value: "2",
}


def _paint(text: str, code: str, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color else text


def _short(value: str | None, width: int = 60) -> str:
    if value is None:
        return "∅"
    return value if len(value) <= width else value[: width - 1] + "…"


def _text_lines(result: dict[str, Any], color: bool) -> Iterable[str]:
    forward = result["decision"] == "forward"
    head = _paint("FORWARD" if forward else "DROP", "1;32" if forward else "1;31", color)
    why = result["reason"] + (f" ({result['detail']})" if result["detail"] else "")
    if result["source"]:
        why += f" by {result['source']}"
    where = ""
    if result["regime"]:
        place = result["place"] or {}
        found = "-".join(filter(None, (place.get("country"), place.get("region")))) or "unknown"
        where = f"   place: {found}   regime: {result['regime']}"
    yield f"{head}  {why}{where}"
    if result["consent"]:
        readings = "  ".join(f"{k}={v}" for k, v in result["consent"].items() if v != "abstain")
        yield f"  consent signals: {readings or 'none (every source abstained)'}"
    located = result.get("location")
    if located:
        sent = located["sent"] or "nothing"
        yield f"  location sent: {sent} ({located['level']}: {located['why']})"
    fwd = result["forwarded"]
    if fwd:
        yield ""
        yield f"  POST {fwd['url']}"
        body = fwd["body"]
        if body and fwd["headers"].get("Content-Type") == "application/json":
            body = json.dumps(json.loads(body), indent=2, ensure_ascii=False)
        if body:
            for line in body.split("\n"):
                yield f"       {line}"
        yield "  " + "   ".join(f"{k}: {v}" for k, v in fwd["headers"].items())
    if result["changes"]:
        yield ""
        width = max(len(c["param"]) for c in result["changes"])
        for c in result["changes"]:
            action = c["action"]
            label = _paint(f"{action:<11}", _ACTION_COLOR.get(action, "0"), color)
            rule = c["rule"] + (f" [{', '.join(c['detail'])}]" if c["detail"] else "")
            if action == Action.KEPT.value:
                yield f"  {c['scope']:<8} {c['param']:<{width}}  {label} {_short(c['before'])}"
            else:
                yield (
                    f"  {c['scope']:<8} {c['param']:<{width}}  {label} {rule:<22} "
                    f"{_short(c['before'], 40)} → {_short(c['after'], 40)}"
                )


def load_jsonl(lines: Iterable[str]) -> Iterator[BeaconInput]:
    for line in lines:
        if line.strip():
            yield BeaconInput.from_mapping(json.loads(line))
