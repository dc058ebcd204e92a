"""``GET /gtag/js?id=…`` and ``/gtag/destination?id=…`` on the public port, and the answers
to the advertising endpoints the rewritten tag may call.

Serving a cached tag is a dictionary lookup and a prepared body: the script is rewritten and
compressed (gzip and brotli) once per fetch, never per request.
"""

from __future__ import annotations

import ipaddress
import logging
import time

from aiohttp import web
from redis.asyncio import Redis

from proxy.config import Config
from proxy.observe.metrics import Metrics
from proxy.tag.cache import TagBody, TagCache, TagUnavailable
from proxy.tag.endpoints import GIF, wants_image
from proxy.tag.origin import TagOrigin, TagRequest
from proxy.tag.rewrite import Rewritten

log = logging.getLogger(__name__)

RETRY_AFTER = "60"  # seconds: a cold cache with the origin unreachable
JAVASCRIPT = "application/javascript; charset=utf-8"
NEW_VARIANTS_PER_MINUTE = 10  # tags with extra keys (l, cx, gtm) fetched for the first time


class TagService:
    """The configured tags, their cache and how they are answered."""

    def __init__(self, config: Config, metrics: Metrics, redis: Redis | None = None) -> None:
        tag = config.tag
        self.allowed_ids = frozenset(config.measurement_ids)
        # Without a configured public origin the tag is written for this machine and served
        # to loopback requests only: enough to try it out, never a tag pointing elsewhere.
        self.loopback_only = tag.public_url is None
        public_url = tag.public_url or f"http://127.0.0.1:{config.listen.port}"
        self.metrics = metrics
        self.origin = TagOrigin(tag.origin, public_url, on_rewrite=self._rewritten)
        self.cache = TagCache(
            self._build, ttl=tag.ttl_seconds, max_stale=tag.max_stale_seconds, redis=redis
        )
        self._variant_minute, self._variants_fetched = -1, 0
        self._headers = {
            "Cache-Control": f"public, max-age={tag.ttl_seconds}",
            "Vary": "Accept-Encoding",
            "X-Content-Type-Options": "nosniff",
        }

    async def close(self) -> None:
        await self.cache.close()
        await self.origin.close()

    async def _build(self, key: str) -> TagBody:
        try:
            body = await self.origin.build(key)
        except TagUnavailable as exc:
            self.metrics.tag_fetches.labels("error").inc()
            log.warning("tag fetch failed", extra={"tag": key, "error": str(exc)})
            raise
        self.metrics.tag_fetches.labels("ok").inc()
        return body

    def _rewritten(self, key: str, rewritten: Rewritten) -> None:
        for rule in rewritten.misses:
            self.metrics.tag_rewrite_misses.labels(rule).inc()
        if rewritten.misses:
            # Google changed the file: the rewrite may no longer catch every host.
            log.warning(
                "tag rewrite missed", extra={"tag": key, "rules": ",".join(rewritten.misses)}
            )

    async def handle(self, request: web.Request) -> web.Response:
        wanted = TagRequest.parse(request.path, request.query, self.allowed_ids)
        if wanted is None or (self.loopback_only and not _is_loopback_host(request.host)):
            return self._counted("not_found", web.Response(status=404))
        key = wanted.key
        if wanted.extra and self.cache.cached(key) is None and not self._variant_budget():
            # The extra keys are the client's to choose: past a few new variants a minute,
            # a new one is answered with the plain tag (the same script for all practical
            # purposes) instead of a fetch from Google and a compression each.
            key = TagRequest(wanted.path, wanted.tag_id).key
        try:
            served = await self.cache.get(key)
        except TagUnavailable:
            return self._counted(
                "unavailable",
                web.Response(
                    status=503, headers={"Retry-After": RETRY_AFTER, "Cache-Control": "no-store"}
                ),
            )
        body = served.body
        headers = {**self._headers, "ETag": body.etag}
        if etag_matches(request.headers.get("If-None-Match"), body.etag):
            return self._counted("not_modified", web.Response(status=304, headers=headers))
        encoding = choose_encoding(request.headers.get("Accept-Encoding", ""))
        data = body.br if encoding == "br" else body.gzip if encoding == "gzip" else body.identity
        if encoding:
            headers["Content-Encoding"] = encoding
        headers["Content-Type"] = JAVASCRIPT
        return self._counted(served.state, web.Response(body=data, headers=headers))

    def _variant_budget(self) -> bool:
        """True while fewer than ``NEW_VARIANTS_PER_MINUTE`` new variants were fetched in
        the current minute (then one is spent)."""
        minute = int(time.monotonic() // 60)
        if minute != self._variant_minute:
            self._variant_minute, self._variants_fetched = minute, 0
        if self._variants_fetched >= NEW_VARIANTS_PER_MINUTE:
            return False
        self._variants_fetched += 1
        return True

    def _counted(self, outcome: str, response: web.Response) -> web.Response:
        self.metrics.tag_requests.labels(outcome).inc()
        return response


def choose_encoding(accept_encoding: str) -> str:
    """``br`` or ``gzip`` when the client accepts it (q > 0), brotli first; else ``""``."""
    accepted: dict[str, float] = {}
    for part in accept_encoding.lower().split(","):
        name, _, params = part.partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        accepted[name.strip()] = q
    for encoding in ("br", "gzip"):
        if accepted.get(encoding, accepted.get("*", 0.0)) > 0:
            return encoding
    return ""


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2): ``W/"x"`` and ``"x"`` match each other."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == opaque for tag in if_none_match.split(","))


def _is_loopback_host(host: str) -> bool:
    name = _hostname(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _hostname(host: str) -> str:
    """``"127.0.0.1:8080"`` -> ``"127.0.0.1"``; ``"[::1]:80"`` -> ``"::1"``."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if ":" in host else host


def ads_answer(request: web.Request) -> web.Response:
    """What the tag expects from an advertising endpoint: a GIF for an image, else 204."""
    headers = {"Cache-Control": "no-store"}
    if wants_image(request.headers.get("Accept", "")):
        return web.Response(body=GIF, content_type="image/gif", headers=headers)
    return web.Response(status=204, headers=headers)
