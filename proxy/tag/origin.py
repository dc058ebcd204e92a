"""Fetching a tag from Google (``tag.origin``) on the proxy's own behalf.

Nothing of a visitor goes with it: the request is built from the measurement id and a fixed
allow-list of query keys alone, with a fixed User-Agent, no cookie jar, no Referer and no
forwarded address. Which tags may be fetched at all is decided before (``TagRequest``): only
the configured measurement ids, so the proxy is never an open relay to Google's tag server.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

import aiohttp

from proxy import __version__
from proxy.tag.cache import TagBody, TagUnavailable
from proxy.tag.rewrite import Rewritten, rewrite

TAG_PATHS = ("/gtag/js", "/gtag/destination")
USER_AGENT = f"analytics-proxy/{__version__} (first-party tag cache)"
FETCH_TIMEOUT = 10.0  # seconds, connect included
MAX_TAG_BYTES = 4 * 1024 * 1024  # gtag.js is about 400 KB; anything far larger is not a tag

# The query keys gtag itself adds when it loads a tag or a linked destination, and the
# shapes their values take. Anything else is not passed on (and not part of the cache key).
EXTRA_KEYS: Mapping[str, re.Pattern[str]] = {
    "l": re.compile(r"^[A-Za-z_$][\w$]{0,63}$"),  # the dataLayer's name
    "cx": re.compile(r"^[a-z]{1,8}$"),  # "c": loaded as a linked destination
    "gtm": re.compile(r"^[\w-]{1,64}$"),  # the loading container's build marker
}


@dataclass(frozen=True, slots=True)
class TagRequest:
    """One tag the proxy may fetch: path, id, and the allowed extra keys, in a fixed order."""

    path: str
    tag_id: str
    extra: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(
        cls, path: str, query: Mapping[str, str], allowed_ids: frozenset[str]
    ) -> TagRequest | None:
        """None unless the path is a tag path and the id is one of ``allowed_ids``."""
        if path not in TAG_PATHS:
            return None
        tag_id = query.get("id", "")
        if tag_id not in allowed_ids:
            return None
        extra = tuple(
            (key, value)
            for key, shape in EXTRA_KEYS.items()
            if (value := query.get(key)) is not None and shape.match(value)
        )
        return cls(path, tag_id, extra)

    @property
    def key(self) -> str:
        """The cache key, and the path and query the origin is asked for."""
        return f"{self.path}?{urlencode((('id', self.tag_id), *self.extra))}"


class TagOrigin:
    """Fetches tags from ``origin`` and rewrites them for ``public_url``.

    ``on_rewrite`` is told the outcome of every rewrite (misses are the caller's to log and
    count)."""

    def __init__(
        self,
        origin: str,
        public_url: str,
        *,
        on_rewrite: Callable[[str, Rewritten], None] | None = None,
        timeout: float = FETCH_TIMEOUT,
    ) -> None:
        self.origin = origin.rstrip("/")
        self.public_url = public_url
        self._on_rewrite = on_rewrite
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                headers={"User-Agent": USER_AGENT, "Accept": "*/*"},
                cookie_jar=aiohttp.DummyCookieJar(),  # nothing Google sets is kept or sent
                trust_env=False,
            )
        return self._session

    async def build(self, key: str) -> TagBody:
        """Fetch ``key`` (a ``TagRequest.key``), rewrite it and compress it."""
        text = await self.fetch(key)
        rewritten = rewrite(text, self.public_url)
        if self._on_rewrite is not None:
            self._on_rewrite(key, rewritten)
        # Compression of a 400 KB script takes tens of milliseconds: off the event loop.
        return await asyncio.to_thread(TagBody.build, rewritten.text, time.time())

    async def fetch(self, key: str) -> str:
        try:
            async with self._client().get(
                self.origin + key, allow_redirects=False
            ) as response:
                if response.status != 200:
                    raise TagUnavailable(f"tag origin answered {response.status}")
                data = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    data += chunk
                    if len(data) > MAX_TAG_BYTES:
                        break
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TagUnavailable(f"tag origin unreachable: {type(exc).__name__}") from None
        if len(data) > MAX_TAG_BYTES:
            raise TagUnavailable("tag origin answered more than a tag's size")
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise TagUnavailable("tag origin answered something that is not text") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
