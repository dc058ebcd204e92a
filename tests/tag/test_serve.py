"""``/gtag/js`` on the real public app over loopback HTTP, with a loopback server standing in
for Google's tag server, and the advertising endpoints the rewritten tag may call."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import brotli
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.config import Config, from_mapping
from proxy.observe.metrics import Metrics
from proxy.server.keys import TAG
from proxy.server.public import init_app
from proxy.tag.rewrite import google_hosts_in
from tests.capture import Capture
from tests.tag.gtag import GTAG_ID, gtag_js

PUBLIC = "https://stats.example.com"
Clients = Callable[..., Awaitable[Any]]
Servers = Callable[..., Awaitable[TestServer]]


@dataclass
class TagOrigin:
    """Google's tag server on loopback: serves a script, records what it was asked."""

    script: str
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    gate: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.path_qs, dict(request.headers)))
        if self.gate is not None:
            await self.gate.wait()
        return web.Response(text=self.script, content_type="application/javascript")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/gtag/js", self.handle)
        app.router.add_get("/gtag/destination", self.handle)
        return app


def tag_config(origin: str, upstream: str, **tag: Any) -> Config:
    return from_mapping(
        {
            "measurement_ids": [GTAG_ID],
            "upstream": {"url": upstream},
            "tag": {"origin": origin, "public_url": PUBLIC, **tag},
        },
        env={},
    )


@dataclass
class Setup:
    proxy: TestClient
    origin: TagOrigin
    origin_server: TestServer
    capture: Capture
    metrics: Metrics


@pytest.fixture
async def setup(aiohttp_client: Clients, aiohttp_server: Servers) -> Setup:
    origin = TagOrigin(gtag_js())
    origin_server = await aiohttp_server(origin.app())
    capture = Capture()
    upstream = await aiohttp_server(capture.app())
    metrics = Metrics()
    config = tag_config(
        str(origin_server.make_url("")).rstrip("/"), str(upstream.make_url("/g/collect"))
    )
    proxy = await aiohttp_client(init_app(config, metrics))
    return Setup(proxy, origin, origin_server, capture, metrics)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(f"analytics_proxy_{name}_total", labels)
    return value or 0.0


async def test_the_tag_is_served_rewritten_from_the_proxy(setup: Setup) -> None:
    resp = await setup.proxy.get(f"/gtag/js?id={GTAG_ID}", headers={"Accept-Encoding": ""})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/javascript; charset=utf-8"
    assert resp.headers["Cache-Control"] == "public, max-age=900"
    assert resp.headers["Vary"] == "Accept-Encoding"
    text = await resp.text()
    assert google_hosts_in(text) == []
    assert f'"{PUBLIC}/g/collect"' in text
    assert sample(setup.metrics, "tag_requests", outcome="fresh") == 1
    assert sample(setup.metrics, "tag_fetches", result="ok") == 1


async def test_nothing_of_the_visitor_goes_to_google(setup: Setup) -> None:
    planted = {
        "Cookie": "_ga=GA1.1.55501234.1700000000; session=s3cr3tvalue",
        "Referer": "https://www.example.com/account?email=jane.doe@example.org",
        "X-Forwarded-For": "198.51.100.23",
        "User-Agent": "Mozilla/5.0 VisitorBrowser/99.1.2.3",
        "Accept-Language": "fr-CH",
        "Sec-CH-UA": '"Chromium";v="122"',
    }
    await setup.proxy.get(f"/gtag/js?id={GTAG_ID}&l=dataLayer&cx=c&gtm=45je4c&email=a@b.c",
                          headers=planted)
    [(path_qs, headers)] = setup.origin.requests
    assert path_qs == f"/gtag/js?id={GTAG_ID}&l=dataLayer&cx=c&gtm=45je4c"
    sent = path_qs + repr(headers)
    for value in ("55501234", "s3cr3tvalue", "jane.doe", "198.51.100", "VisitorBrowser",
                  "fr-CH", "Chromium"):
        assert value not in sent
    assert {k.lower() for k in headers} & {"cookie", "referer", "x-forwarded-for"} == set()
    assert headers["User-Agent"].startswith("analytics-proxy/")


@pytest.mark.parametrize(
    "target",
    [
        "/gtag/js?id=G-NOTCONFIGURED",
        "/gtag/js",
        "/gtag/js?id=GTM-ABC123",
        f"/gtag/js?id={GTAG_ID.lower()}",
        "/gtag/destination?id=AW-123456789",
        f"/gtag/js?id={GTAG_ID}%00",
    ],
)
async def test_ids_not_configured_are_404_and_never_fetched(setup: Setup, target: str) -> None:
    resp = await setup.proxy.get(target)
    assert resp.status == 404
    assert setup.origin.requests == []
    assert sample(setup.metrics, "tag_requests", outcome="not_found") == 1


async def test_linked_destinations_are_served_the_same_way(setup: Setup) -> None:
    resp = await setup.proxy.get(f"/gtag/destination?id={GTAG_ID}&cx=c&gtm=45je4c")
    assert resp.status == 200
    assert setup.origin.requests[0][0] == f"/gtag/destination?id={GTAG_ID}&cx=c&gtm=45je4c"


@pytest.mark.parametrize(
    ("accept", "encoding", "decode"),
    [
        ("gzip, deflate, br, zstd", "br", brotli.decompress),
        ("gzip", "gzip", gzip.decompress),
        ("br;q=0, gzip;q=0.5", "gzip", gzip.decompress),
        ("identity", None, lambda data: data),
    ],
)
async def test_compressed_as_the_browser_accepts(
    setup: Setup, accept: str, encoding: str | None, decode: Callable[[bytes], bytes]
) -> None:
    plain = await (await setup.proxy.get(f"/gtag/js?id={GTAG_ID}",
                                         headers={"Accept-Encoding": ""})).read()
    resp = await setup.proxy.get(
        f"/gtag/js?id={GTAG_ID}", headers={"Accept-Encoding": accept}, auto_decompress=False
    )
    assert resp.headers.get("Content-Encoding") == encoding
    raw = await resp.read()
    assert decode(raw) == plain
    if encoding:
        assert len(raw) < len(plain) / 2
    assert len(setup.origin.requests) == 1  # one fetch, every encoding from memory


async def test_a_known_etag_is_answered_304(setup: Setup) -> None:
    first = await setup.proxy.get(f"/gtag/js?id={GTAG_ID}")
    etag = first.headers["ETag"]
    again = await setup.proxy.get(f"/gtag/js?id={GTAG_ID}", headers={"If-None-Match": etag})
    assert again.status == 304
    assert again.headers["ETag"] == etag
    assert await again.read() == b""
    other = await setup.proxy.get(f"/gtag/js?id={GTAG_ID}", headers={"If-None-Match": '"x"'})
    assert other.status == 200


async def test_a_cold_cache_with_google_unreachable_is_503_with_retry_after(
    aiohttp_client: Clients, aiohttp_server: Servers
) -> None:
    capture = Capture()
    upstream = await aiohttp_server(capture.app())
    metrics = Metrics()
    # A loopback port nothing listens on: connection refused.
    dead = await aiohttp_server(web.Application())
    url = str(dead.make_url("")).rstrip("/")
    await dead.close()
    proxy = await aiohttp_client(init_app(tag_config(url, str(upstream.make_url("/g/collect"))),
                                          metrics))
    resp = await proxy.get(f"/gtag/js?id={GTAG_ID}")
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "60"
    assert sample(metrics, "tag_requests", outcome="unavailable") == 1
    assert sample(metrics, "tag_fetches", result="error") == 1


async def test_the_cached_tag_serves_while_google_is_down_even_when_stale(setup: Setup) -> None:
    first = await setup.proxy.get(f"/gtag/js?id={GTAG_ID}")
    body = await first.read()
    await setup.origin_server.close()
    cache = setup.proxy.app[TAG].cache
    fetched = cache.cached(f"/gtag/js?id={GTAG_ID}")
    assert fetched is not None
    cache._clock = lambda: fetched.fetched_at + 3600  # an hour later: stale, origin down
    for _ in range(3):
        resp = await setup.proxy.get(f"/gtag/js?id={GTAG_ID}")
        assert resp.status == 200
        assert await resp.read() == body
    await asyncio.sleep(0.1)
    assert sample(setup.metrics, "tag_requests", outcome="stale") == 3
    assert sample(setup.metrics, "tag_fetches", result="error") >= 1


async def test_concurrent_first_requests_fetch_once(setup: Setup) -> None:
    setup.origin.gate = asyncio.Event()
    waiting = [asyncio.create_task(setup.proxy.get(f"/gtag/js?id={GTAG_ID}")) for _ in range(10)]
    await asyncio.sleep(0.1)
    setup.origin.gate.set()
    statuses = [(await task).status for task in waiting]
    assert statuses == [200] * 10
    assert len(setup.origin.requests) == 1


async def test_replicas_sharing_redis_fetch_once(
    aiohttp_client: Clients, aiohttp_server: Servers, redis_url: str
) -> None:
    origin = TagOrigin(gtag_js(), gate=asyncio.Event())
    origin_server = await aiohttp_server(origin.app())
    capture = Capture()
    upstream = await aiohttp_server(capture.app())
    data = {
        "measurement_ids": [GTAG_ID],
        "upstream": {"url": str(upstream.make_url("/g/collect"))},
        "state": {"redis_url": redis_url},
        "tag": {"origin": str(origin_server.make_url("")).rstrip("/"), "public_url": PUBLIC},
    }
    replicas = [await aiohttp_client(init_app(from_mapping(data, env={}), Metrics()))
                for _ in range(2)]
    waiting = [asyncio.create_task(r.get(f"/gtag/js?id={GTAG_ID}"))
               for r in replicas for _ in range(3)]
    await asyncio.sleep(0.2)
    origin.gate.set()
    bodies = {await (await task).read() for task in waiting}
    assert len(bodies) == 1
    assert len(origin.requests) == 1


async def test_a_rewrite_that_misses_is_counted_and_the_tag_still_served(
    setup: Setup,
) -> None:
    setup.origin.script = 'var u="https://"+r+".eu.google-analytics.com/g/collect";'
    resp = await setup.proxy.get(f"/gtag/js?id={GTAG_ID}")
    assert resp.status == 200
    assert sample(setup.metrics, "tag_rewrite_misses", rule="templated_collection") == 1
    assert sample(setup.metrics, "tag_rewrite_misses", rule="residue") == 1


ADS_PATHS = [
    "/ccm/collect?en=page_view&tid=AW-1",
    "/g/ccm/collect?tid=G-69XYTDF1T2",
    "/gs/ccm/collect?tid=G-69XYTDF1T2",
    "/as/d/ccm/conversion/123",
    "/ads/ga-audiences?v=1&t=sr&tid=G-69XYTDF1T2",
    "/measurement/conversion/?random=1",
    "/pagead/1p-conversion/123/?random=1",
    "/pagead/viewthroughconversion/123/",
    "/pagead/set_partitioned_cookie?dl=x",
    "/td?id=G-69XYTDF1T2&v=3",
    "/a?id=G-69XYTDF1T2",
    "/g/s/collect?v=2&_gsid=abc",
    "/ag/g/c?v=2",
    "/ga/g/c?v=2",
    "/activityi;src=123;type=x;cat=y",
    "/fls/activityi;src=1",
    "/ddm/activity/src=1",
    "/travel/flights/click/conversion/1/",
]


@pytest.mark.parametrize("path", ADS_PATHS)
async def test_advertising_endpoints_are_answered_and_never_forwarded(
    setup: Setup, path: str
) -> None:
    resp = await setup.proxy.post(path, data=b"uid=12345&em=jane@example.org")
    assert resp.status == 204
    img = await setup.proxy.get(path, headers={"Accept": "image/avif,image/webp,*/*"})
    assert img.status == 200
    assert img.headers["Content-Type"] == "image/gif"
    assert (await img.read()).startswith(b"GIF89a")
    assert sample(setup.metrics, "beacons_dropped", reason="ads_endpoint") == 2
    await asyncio.sleep(0.05)
    assert setup.capture.hits == [] and setup.capture.attempts == 0


@pytest.mark.parametrize(
    "path", ["/favicon.ico", "/gtm.js?id=GTM-X", "/debug/bootstrap?id=G-1", "/static/x.js",
             "/g/collectx", "/tdx", "/_/service_worker/abc/sw.js"],
)
async def test_other_paths_are_404_and_not_counted_as_beacons(setup: Setup, path: str) -> None:
    resp = await setup.proxy.get(path)
    assert resp.status == 404
    assert sample(setup.metrics, "beacons_received") == 0


async def test_without_a_public_url_the_tag_is_for_loopback_requests_only(
    aiohttp_client: Clients, aiohttp_server: Servers
) -> None:
    origin = TagOrigin(gtag_js())
    origin_server = await aiohttp_server(origin.app())
    capture = Capture()
    upstream = await aiohttp_server(capture.app())
    config = from_mapping(
        {
            "measurement_ids": [GTAG_ID],
            "upstream": {"url": str(upstream.make_url("/g/collect"))},
            "listen": {"port": 8123},
            "tag": {"origin": str(origin_server.make_url("")).rstrip("/")},
        },
        env={},
    )
    proxy = await aiohttp_client(init_app(config, Metrics()))
    outside = await proxy.get(f"/gtag/js?id={GTAG_ID}", headers={"Host": "stats.example.com"})
    assert outside.status == 404
    assert origin.requests == []
    local = await proxy.get(f"/gtag/js?id={GTAG_ID}", headers={"Host": "localhost:8123"})
    assert local.status == 200
    assert '"http://127.0.0.1:8123/g/collect"' in await local.text()


async def test_tag_serving_can_be_turned_off(
    aiohttp_client: Clients, aiohttp_server: Servers
) -> None:
    origin = TagOrigin(gtag_js())
    origin_server = await aiohttp_server(origin.app())
    config = tag_config(str(origin_server.make_url("")).rstrip("/"), "stdout", enabled=False)
    proxy = await aiohttp_client(init_app(config, Metrics()))
    assert (await proxy.get(f"/gtag/js?id={GTAG_ID}")).status == 404
    assert origin.requests == []


async def test_made_up_variants_cannot_make_the_proxy_fetch_again_and_again(
    setup: Setup,
) -> None:
    # l/cx/gtm are the client's to choose: past a few new variants a minute, the plain tag
    # answers instead of a fetch from Google and a compression for each.
    for n in range(40):
        resp = await setup.proxy.get(f"/gtag/js?id={GTAG_ID}&gtm=45je{n}")
        assert resp.status == 200
    fetched = [path for path, _ in setup.origin.requests]
    assert len(fetched) <= 11
    assert f"/gtag/js?id={GTAG_ID}" in fetched
