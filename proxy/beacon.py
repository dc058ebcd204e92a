"""GA4 ``/g/collect`` requests: parsing into a ``Beacon`` and re-encoding (ga4-collect.md §2).

A request carries shared parameters in its query and zero or more events, one per body line.
An event's effective parameters are the query's overlaid with its line's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

MAX_BODY = 64 * 1024  # a browser's keepalive/beacon budget: a real body is never larger
MAX_QUERY = 16 * 1024
MAX_EVENTS = 100  # gtag batches far fewer; more is not a browser

Params = dict[str, str]
_SAFE = "._~-!*()'"  # what encodeURIComponent leaves alone
_PLAIN = re.compile(r"[A-Za-z0-9._~!*()'-]*")


class MalformedBeacon(ValueError):
    """The request is not a GA4 beacon. The message is a reason code, never input data."""


@dataclass(slots=True)
class Beacon:
    """One parsed request: shared (query) parameters and the body's event lines."""

    shared: Params
    lines: list[Params]

    @property
    def tid(self) -> str:
        return self.shared.get("tid", "")

    def events(self) -> list[Params]:
        """Effective parameters of each event (a body line wins over the query)."""
        if not self.lines:
            return [self.shared]
        return [{**self.shared, **line} for line in self.lines]


def _decode(text: str) -> str:
    return unquote(text.replace("+", " "), errors="strict")


def _parse_params(text: str) -> Params:
    """``a=1&b=%20x&flag`` -> dict; bare flags (gtag's ``richsstsse``) get an empty value."""
    params: Params = {}
    for pair in text.split("&"):
        name, _, value = pair.partition("=")
        # Inline fast path: most names and many values carry no escape at all.
        if "%" in name or "+" in name:
            name = _decode(name)
        if "%" in value or "+" in value:
            value = _decode(value)
        if name:
            params[name] = value
    return params


def parse(query: str, body: bytes | str = b"") -> Beacon:
    """Parse a query string and body; raise ``MalformedBeacon`` with a reason code."""
    if len(query) > MAX_QUERY:
        raise MalformedBeacon("query_too_long")
    if isinstance(body, bytes):
        if len(body) > MAX_BODY:
            raise MalformedBeacon("too_large")
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedBeacon("undecodable") from None
    try:
        shared = _parse_params(query)
        lines = [_parse_params(line) for line in body.replace("\r\n", "\n").split("\n") if line]
    except UnicodeDecodeError:
        raise MalformedBeacon("undecodable") from None
    if len(lines) > MAX_EVENTS:
        raise MalformedBeacon("too_many_events")
    beacon = Beacon(shared, lines)
    for event in beacon.events():
        if event.get("v") != "2":
            raise MalformedBeacon("no_v2")
        if not event.get("tid"):
            raise MalformedBeacon("no_tid")
    if any(line.get("tid", beacon.tid) != beacon.tid for line in lines):
        # One request goes to one property; a line claiming another would slip past the check.
        raise MalformedBeacon("mixed_tid")
    return beacon


def _encode(text: str) -> str:
    return text if _PLAIN.fullmatch(text) else quote(text, safe=_SAFE)


def encode_params(params: Params) -> str:
    """URL-encode like gtag's encodeURIComponent (space as %20, not +)."""
    return "&".join(f"{_encode(k)}={_encode(v)}" for k, v in params.items())


def encode_sanitised(params: Params) -> str:
    """``encode_params`` for sanitised output, whose names all come from the policy table
    and are plain by construction: only the values need encoding."""
    return "&".join(f"{k}={_encode(v)}" for k, v in params.items())


def encode_body(lines: list[Params]) -> str:
    """One event per line, ``\\n``-separated (the form gtag itself sends)."""
    return "\n".join(encode_params(line) for line in lines)
