"""GA4 ``/g/collect`` requests: parsing into a ``Beacon`` and re-encoding (ga4-collect.md §2).

A request carries shared parameters in its query and zero or more events, one per body line.
An event's effective parameters are the query's overlaid with its line's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
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


def _case_variants(hex_pair: str) -> set[str]:
    first, second = hex_pair[0], hex_pair[1]
    return {a + b for a in {first, first.lower()} for b in {second, second.lower()}}


# "%XX" escapes of ASCII characters (any case of the hex digits) -> the character.
_ASCII_ESCAPES = {
    variant: chr(code) for code in range(128) for variant in _case_variants(f"{code:02X}")
}


def _decode(text: str) -> str:
    """``unquote(text.replace("+", " "), errors="strict")``, without its per-byte work when
    every escape is of an ASCII character (nearly all values): any other escape (a UTF-8
    sequence, a broken one) takes ``unquote`` itself, so the result is always the same."""
    if "+" in text:
        text = text.replace("+", " ")
    parts = text.split("%")
    if len(parts) == 1:
        return text
    escapes = _ASCII_ESCAPES
    out = [parts[0]]
    for part in parts[1:]:
        char = escapes.get(part[:2])
        if char is None:
            return unquote(text, errors="strict")
        out.append(char)
        out.append(part[2:])
    return "".join(out)


def _parse_params(text: str, decoded: Mapping[str, str] | None = None) -> Params:
    """``a=1&b=%20x&flag`` -> dict; bare flags (gtag's ``richsstsse``) get an empty value.
    ``decoded``: escaped values whose decoding is known (``_decode`` of each key)."""
    params: Params = {}
    known = decoded or {}
    for pair in text.split("&"):
        name, _, value = pair.partition("=")
        # Inline fast path: most names and many values carry no escape at all.
        if "%" in name or "+" in name:
            name = _decode(name)
        if "%" in value or "+" in value:
            value = known.get(value) or _decode(value)
        if name:
            params[name] = value
    return params


def parse(
    query: str, body: bytes | str = b"", *, decoded: Mapping[str, str] | None = None
) -> Beacon:
    """Parse a query string and body; raise ``MalformedBeacon`` with a reason code.
    ``decoded``: escaped values and their decoding, known already (the sanitiser's)."""
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
        shared = _parse_params(query, decoded)
        lines = [
            _parse_params(line, decoded) for line in body.replace("\r\n", "\n").split("\n") if line
        ]
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


encode_value = _encode  # one value, as encode_params encodes it


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
