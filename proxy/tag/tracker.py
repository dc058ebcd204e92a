"""``GET /t.js?id=<measurement id>``: the proxy's own first-party tracker, a few kilobytes
that speak GA4's ``/g/collect`` to the origin that served them (``proxy/tag/t.js``; served
minified, ``t.min.js``, built by ``make tracker``).

The script's body is the same for every configured id: it reads its id from its own URL.
What differs by configuration is the set of optional fields it sends, written into it at
start-up from the compiled policy, so the script never sends a field the policy would drop.
Everything (the body, its two compressed forms, the version) is prepared once, here.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from importlib import resources

import brotli
from aiohttp import web

from proxy.config import Config
from proxy.observe.metrics import Metrics
from proxy.sanitize.policy import Policy, compile_policy
from proxy.tag.service import JAVASCRIPT, choose_encoding, etag_matches

PATH = "/t.js"
MARKER = '{"FIELDS":0}'  # where the minified script takes the forwarded fields
# The optional fields the script can send; it sends each only where the policy forwards it.
# (``v``, ``tid``, ``cid``, ``_p``, ``_s``, ``gcs``, ``en``, ``dl`` and the event's own
# parameters are always sent: the policy decides on them per value.)
OPTIONAL_FIELDS = ("_fv", "_ss", "_et", "sid", "sct", "seg", "ul", "sr", "dr", "dt")
VERSIONED_MAX_AGE = 365 * 24 * 3600  # ?v=<the current version>: never changes
UNVERSIONED_MAX_AGE = 300  # no or another ?v=: revalidated (ETag) after five minutes


def tracker_source(minified: bool = True) -> str:
    """The shipped script: the minified build served, or its source."""
    name = "t.min.js" if minified else "t.js"
    return resources.files("proxy.tag").joinpath(name).read_text(encoding="utf-8")


def forwarded_fields(policy: Policy) -> dict[str, int]:
    """``{"sid": 1, ...}``: the optional fields this policy can forward (a drop-everything
    rule, such as ``sct`` under the strict profile, leaves its field out)."""
    fields = {name: 1 for name in OPTIONAL_FIELDS if not policy.rule(name).drops}
    if any(name.startswith(("up.", "upn.")) for name in policy.table):
        fields["up"] = 1  # user properties: only where some are allow-listed
    return fields


def build_tracker(policy: Policy) -> str:
    """The script as served for ``policy``: the shipped build with its fields written in."""
    source = tracker_source()
    if source.count(MARKER) != 1:
        raise RuntimeError("proxy/tag/t.min.js: the fields marker is not there once")
    return source.replace(MARKER, json.dumps(forwarded_fields(policy), separators=(",", ":")))


class Tracker:
    """``/t.js`` for the configured ids: one prepared body, compressed once."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.allowed_ids = frozenset(config.measurement_ids)
        self.metrics = metrics
        script = build_tracker(compile_policy(config.privacy, config.allowed_origins))
        self.identity = script.encode("utf-8")
        self.gzip = gzip.compress(self.identity, 9, mtime=0)
        self.br = brotli.compress(self.identity, quality=11)
        self.version = hashlib.sha256(self.identity).hexdigest()[:12]
        self.etag = f'W/"{self.version}"'

    def url(self, public_url: str, tag_id: str) -> str:
        """The versioned address to put in the page: cached by browsers for a year."""
        return f"{public_url.rstrip('/')}{PATH}?id={tag_id}&v={self.version}"

    def handle(self, request: web.Request) -> web.Response:
        query = request.query
        if query.get("id") not in self.allowed_ids:
            self.metrics.tracker_requests.labels("not_found").inc()
            return web.Response(status=404, headers={"Cache-Control": "no-store"})
        max_age = VERSIONED_MAX_AGE if query.get("v") == self.version else UNVERSIONED_MAX_AGE
        headers = {
            "Cache-Control": f"public, max-age={max_age}"
            + (", immutable" if max_age == VERSIONED_MAX_AGE else ""),
            "ETag": self.etag,
            "Vary": "Accept-Encoding",
            "X-Content-Type-Options": "nosniff",
        }
        if etag_matches(request.headers.get("If-None-Match"), self.etag):
            self.metrics.tracker_requests.labels("not_modified").inc()
            return web.Response(status=304, headers=headers)
        encoding = choose_encoding(request.headers.get("Accept-Encoding", ""))
        body = self.br if encoding == "br" else self.gzip if encoding == "gzip" else self.identity
        if encoding:
            headers["Content-Encoding"] = encoding
        headers["Content-Type"] = JAVASCRIPT
        self.metrics.tracker_requests.labels("served").inc()
        return web.Response(body=body, headers=headers)
