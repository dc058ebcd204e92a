"""The try-a-beacon box: what the operator pastes (a beacon URL with options, or a HAR),
checked and turned into the beacons ``explain`` runs. Used for that one answer only: never
logged, never stored."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

from proxy.ingest.client import parse_address
from proxy.observe.explain import BeaconInput, har_beacons

MAX_INPUT = 1 << 20  # bytes accepted by the try-a-beacon box
MAX_HAR_BEACONS = 100  # beacons of one HAR explained; the rest are counted, not run
_COUNTRY = re.compile(r"^[A-Za-z]{2}$")


class BadInput(ValueError):
    """The try-a-beacon input cannot be explained. The message is fixed text, never the
    input itself, so it can be shown and logged safely."""


def parse_explain_request(data: Any) -> tuple[list[BeaconInput], int]:
    """The beacons to explain from the box's JSON (``url`` + options, or ``har``), and how
    many there were in all. Raises ``BadInput`` with a message fit to show."""
    if not isinstance(data, dict):
        raise BadInput("expected a JSON object with 'url' or 'har'")
    har = data.get("har")
    if har is not None and har != "":
        # The box sends the file's text; a script may as well send the HAR object itself.
        text = _text(data, "har") if isinstance(har, str) else None
        try:
            parsed = har if text is None else json.loads(text)
            if not isinstance(parsed, dict):
                raise ValueError("not an object")
            beacons = list(har_beacons(parsed))
            for beacon in beacons:
                _check_har_beacon(beacon)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            raise BadInput("not a HAR export (DevTools → Network → Save all as HAR)") from None
        if not beacons:
            raise BadInput("the HAR holds no /g/collect request")
        return beacons[:MAX_HAR_BEACONS], len(beacons)
    url = _text(data, "url").strip()
    if not url:
        raise BadInput("paste a beacon URL (…/g/collect?v=2&tid=…) or a HAR")
    if "?" not in url and "=" in url:
        url = "/g/collect?" + url  # a bare query string
    if not urlsplit(url).query:
        raise BadInput("the URL has no query: paste the whole …/g/collect?v=2&tid=… URL")
    client_ip = _text(data, "client_ip").strip()
    if client_ip and parse_address(client_ip) is None:
        raise BadInput("client IP: not an IPv4 or IPv6 address")
    country = _text(data, "country").strip()
    if country and not _COUNTRY.match(country):
        raise BadInput("country: two letters (ISO 3166), e.g. DE")
    body = _text(data, "body")
    method = _text(data, "method").upper() or ("POST" if body else "GET")
    if method not in ("GET", "POST"):
        raise BadInput("method: GET or POST")
    user_agent = _text(data, "user_agent").strip()
    beacon = BeaconInput(
        url=url,
        method=method,
        body=body,
        # Not checked for encodability: an undecodable cookie is the pipeline's to refuse
        # (consent_error), as serve refuses it; it is never shown back.
        cookie=_text(data, "cookie", any_text=True).strip() or None,
        headers={"User-Agent": user_agent} if user_agent else {},
        country=country.upper() or None,
        client_ip=client_ip or None,
    )
    return [beacon], 1


def _text(data: dict[str, Any], key: str, *, any_text: bool = False) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str) or not (any_text or _encodable(value)):
        raise BadInput(f"{key}: expected text")
    return value


def _encodable(value: str) -> bool:
    try:
        value.encode()  # JSON may carry lone surrogates, which no request can
    except UnicodeEncodeError:
        return False
    return True


def _check_har_beacon(beacon: BeaconInput) -> None:
    """A HAR is JSON of any shape: what ``har_beacons`` took from it must be text."""
    texts = [beacon.url, beacon.method, beacon.body]
    texts += [*beacon.headers.keys(), *beacon.headers.values()]
    if not all(isinstance(t, str) and _encodable(t) for t in texts):
        raise ValueError("not text")
    if not isinstance(beacon.cookie or "", str):  # undecodable is the pipeline's to refuse
        raise ValueError("not text")
    if beacon.method.upper() not in ("GET", "POST"):
        raise ValueError("method")
