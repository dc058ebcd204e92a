"""A checked ``MpRequest`` through the compiled policy: the same ``Sanitizer``, table,
allow-lists and detectors as a ``/g/collect`` hit, then back into Measurement Protocol JSON.

Each field is written as its web-protocol counterpart (``proxy/mp/fields.py``): ``client_id``
as ``cid``, user properties as ``up.``/``upn.``, each event as a body line with ``en``, its
parameters as ``ep.``/``epn.`` (or ``dl``, ``dt``, ...) and its items as ``pr<N>``. What the
policy keeps is read back under the original names and types; what it drops is gone. The
fields only the Measurement Protocol has get the proxy's own treatment, listed in
``fields.TOP_LEVEL``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.ingest.beacon import Beacon, Params
from proxy.mp.fields import (
    DEVICE_BROWSERS,
    DEVICE_CATEGORIES,
    DEVICE_DROPPED,
    DEVICE_OS,
    DEVICE_PARAMS,
    EVENT_PARAMS,
    ITEM_FIELDS,
    NUMERIC_ITEM_FIELDS,
)
from proxy.mp.schema import CONSENT_FIELD, MpRequest, Scalar
from proxy.sanitize.policy import Action
from proxy.sanitize.sanitizer import Change, Sanitizer
from proxy.sanitize.useragent import UserAgentGeneraliser

GA_WINDOW = 72 * 3600  # seconds back GA accepts timestamp_micros
CLOCK_SKEW = 60  # seconds ahead of our clock a back end's timestamp may be
_INTEGER = re.compile(r"-?\d{1,18}")
_MAJOR = re.compile(r"(\d{1,3})(?:\.|$)")
_ITEM_NAMES = {key: name for name, key in ITEM_FIELDS.items()}
_PARAM_NAMES = {slot: name for name, slot in EVENT_PARAMS.items()}
_DEVICE_NAMES = {slot: name for name, slot in DEVICE_PARAMS.items()}
# Top-level fields that are never forwarded, and the rule the trace names.
_DROPPED = {"user_id": "identifier", "user_data": "identifier", "user_location": "location",
            "app_instance_id": "identifier", CONSENT_FIELD: "proxy_set"}
_OWN = frozenset({"client_id", "events", "user_properties", "timestamp_micros", "ip_override",
                  "device", "user_agent", "consent", "non_personalized_ads"})
_FORCED_CONSENT = {"ad_user_data": "DENIED", "ad_personalization": "DENIED"}
SCOPE = "query"  # top-level fields are the request's, as a beacon's query parameters are


@dataclass(frozen=True, slots=True)
class SanitisedMp:
    body: dict[str, Any]  # the JSON for Google; no "events" key: nothing left to send
    changes: tuple[Change, ...]
    pseudonym: str


class MpSanitiser:
    """Compiled once per pipeline; ``sanitise`` reads only the compiled structures."""

    def __init__(
        self,
        sanitizer: Sanitizer,
        agents: UserAgentGeneraliser,
        outbox_max_age: int,
        clock: Callable[[], float],
    ) -> None:
        self._sanitizer = sanitizer
        self._forced = frozenset(sanitizer.policy.forced)
        self._agents = agents
        # A timestamp must still be inside GA's window when a late delivery from the outbox
        # reaches Google.
        self._window = max(0, GA_WINDOW - outbox_max_age)
        self._clock = clock

    def sanitise(
        self,
        request: MpRequest,
        pseudonymize: Callable[[str], str],
        location: str | None,
        *,
        trace: bool = False,
    ) -> SanitisedMp:
        """``location``: what the location mode made of ``ip_override``, or None."""
        changes: list[Change] | None = [] if trace else None
        shared: Params = {"cid": request.client_id}
        numeric: set[str] = set()
        for name, value in request.user_properties.items():
            slot = f"upn.{name}" if _is_number(value) else f"up.{name}"
            shared[slot] = _text(value)
        for name, slot in DEVICE_PARAMS.items():
            if name in request.device:
                shared[slot] = _text(request.device[name])
        lines: list[Params] = []
        for index, event in enumerate(request.events):
            line: Params = {"en": event.name}
            for name, param in event.params.items():
                if isinstance(param, list):  # items: the schema allows a list nowhere else
                    for n, item in enumerate(param, 1):
                        line[f"pr{n}"] = _item(item, f"event {index + 1}", changes)
                    continue
                slot = EVENT_PARAMS.get(name) or (
                    f"epn.{name}" if _is_number(param) else f"ep.{name}"
                )
                if _is_number(param):
                    numeric.add(f"{index}:{slot}")
                line[slot] = _text(param)
            lines.append(line)
        clean = self._sanitizer.sanitize(Beacon(shared, lines), pseudonymize, trace=trace)
        if changes is not None:
            # npa: the web form of non_personalized_ads, traced below under its own name.
            changes.extend(c for c in clean.changes if c.param not in self._forced)

        body: dict[str, Any] = {}
        pseudonym = clean.shared.get("cid", "")
        if pseudonym:
            body["client_id"] = pseudonym
        stamp = self._timestamp(request.timestamp_micros, changes)
        if stamp is not None:
            body["timestamp_micros"] = stamp
        body["non_personalized_ads"] = True
        body["consent"] = dict(_FORCED_CONSENT)
        properties = {
            name.split(".", 1)[1]: {"value": _value(value, name.startswith("upn."))}
            for name, value in clean.shared.items()
            if name.startswith(("up.", "upn."))
        }
        if properties:
            body["user_properties"] = properties
        if location:
            body["ip_override"] = location
        agent = self._user_agent(request.user_agent)
        if agent:
            body["user_agent"] = agent
        device = self._device(request.device, clean.shared)
        if device:
            body["device"] = device
        events = []
        for index, line in enumerate(clean.lines):
            if "en" not in line:
                continue  # the event name did not pass the policy: the event is not sent
            params: dict[str, Any] = {}
            items = []
            for slot, value in line.items():
                if slot == "en":
                    continue
                if slot.startswith("pr") and slot[2:].isdigit():
                    items.append(_item_back(value))
                elif slot.startswith(("ep.", "epn.")):
                    params[slot.split(".", 1)[1]] = _value(value, slot.startswith("epn."))
                elif slot in _PARAM_NAMES:
                    params[_PARAM_NAMES[slot]] = _value(value, f"{index}:{slot}" in numeric)
            if items:
                params["items"] = items
            events.append({"name": line["en"], "params": params})
        if events:
            body["events"] = events
        if changes is not None:
            changes.extend(self._top_level(request, body, location))
        return SanitisedMp(body, tuple(changes or ()), pseudonym)

    def _timestamp(self, stamp: int | None, changes: list[Change] | None) -> int | None:
        if stamp is None:
            return None
        now = self._clock()
        kept = now - self._window <= stamp / 1e6 <= now + CLOCK_SKEW
        if changes is not None:
            changes.append(Change(SCOPE, "timestamp_micros",
                                  Action.KEPT if kept else Action.DROPPED, "timestamp",
                                  str(stamp), str(stamp) if kept else None,
                                  () if kept else ("outside_ga_window",)))
        return stamp if kept else None

    def _user_agent(self, ua: str | None) -> str | None:
        if not ua:
            return None
        agent = self._agents.generalise(ua)
        return None if agent.is_bot else agent.user_agent

    @staticmethod
    def _device(device: dict[str, Scalar], shared: Params) -> dict[str, str]:
        out: dict[str, str] = {}
        category = str(device.get("category", "")).lower()
        if category in DEVICE_CATEGORIES:
            out["category"] = category
        for key, allowed in (("operating_system", DEVICE_OS), ("browser", DEVICE_BROWSERS)):
            if device.get(key) in allowed:
                out[key] = str(device[key])
        major = _MAJOR.match(str(device.get("browser_version", "")))
        if major and "browser" in out:
            out["browser_version"] = major.group(1)
        for slot, name in _DEVICE_NAMES.items():
            if slot in shared:
                out[name] = shared[slot]
        return out

    def _top_level(
        self, request: MpRequest, body: dict[str, Any], location: str | None
    ) -> list[Change]:
        """The trace of the fields only the Measurement Protocol has (explain, audit)."""
        out = []
        for name in request.present:
            if name in _DROPPED:
                out.append(Change(SCOPE, name, Action.DROPPED, _DROPPED[name], None, None))
            elif name not in _OWN:
                out.append(Change(SCOPE, name, Action.DROPPED, "unknown", None, None))
        if request.ip_override is not None:
            action = Action.REPLACED if location else Action.DROPPED
            out.append(Change(SCOPE, "ip_override", action, "location", request.ip_override,
                              location))
        if request.user_agent is not None:
            after = body.get("user_agent")
            out.append(Change(SCOPE, "user_agent", Action.GENERALISED if after else
                              Action.DROPPED, "user_agent", request.user_agent, after))
        for name in DEVICE_DROPPED:
            if name in request.device:
                out.append(Change(SCOPE, f"device.{name}", Action.DROPPED, "fingerprint",
                                  str(request.device[name]), None))
        kept = body.get("device", {})
        for name in ("category", "operating_system", "browser", "browser_version"):
            if name in request.device:
                before, after = str(request.device[name]), kept.get(name)
                action = (Action.KEPT if before == after else
                          Action.GENERALISED if after else Action.DROPPED)
                out.append(Change(SCOPE, f"device.{name}", action, "user_agent", before, after))
        for name, value in (("consent", _FORCED_CONSENT), ("non_personalized_ads", True)):
            out.append(Change(SCOPE, name, Action.FORCED, "proxy_set", None, json.dumps(value)))
        return out


def _is_number(value: Scalar) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: Scalar) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))  # 10.0 is GA's 10, and a shape the number rule knows
    return str(value)


def _value(text: str, number: bool) -> str | int | float:
    if not number:
        return text
    try:
        return int(text) if _INTEGER.fullmatch(text) else float(text)
    except ValueError:
        return text  # a site's override kept something that is not a number: as text


def _item(item: dict[str, Scalar], scope: str, changes: list[Change] | None) -> str:
    tokens = []
    for name, value in item.items():
        key = ITEM_FIELDS.get(name)
        if key is None:
            if changes is not None:
                changes.append(Change(scope, "items", Action.DROPPED, "item_custom", None, None))
            continue
        # "~" separates the tokens: inside a value it would start a token of its own.
        tokens.append(key + _text(value).replace("~", " "))
    return "~".join(tokens)


def _item_back(value: str) -> dict[str, Any]:
    item: dict[str, Any] = {}
    for token in value.split("~"):
        name = _ITEM_NAMES.get(token[:2])
        if name is None:
            continue
        text = token[2:]
        if name in NUMERIC_ITEM_FIELDS:
            number = _value(text, True)
            if isinstance(number, str):
                continue  # scrubbed into something that is no longer a number
            item[name] = number
        else:
            item[name] = text
    return item
