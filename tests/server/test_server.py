"""The real server on a loopback port, forwarding over HTTP to a loopback capture server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from proxy.config import Config, from_mapping
from proxy.ingest.beacon import MAX_BODY, MAX_QUERY
from proxy.ingest.cookies import MAX_COOKIE_HEADER
from proxy.observe.logs import JsonFormatter
from proxy.observe.metrics import Metrics
from proxy.server.admin import init_admin_app
from proxy.server.keys import RESOLVER
from proxy.server.public import init_app
from tests.capture import Capture
from tests.conftest import GA4_HITS
from tests.raw_http import exchange, http_request

GRANTED = "analytics_consent=granted; _ga=GA1.1.1141082648.1693483972; session=abc123"
CLIENT_IP = "203.0.113.57"
UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/122.0.6261.69 Safari/537.36"
)
HEADERS = {
    "Cookie": GRANTED,
    "User-Agent": UA,
    "X-Forwarded-For": CLIENT_IP,
    "Origin": "https://www.example.com",
}
Clients = Callable[..., Awaitable[Any]]


def proxy_config(url: str, **overrides: Any) -> Config:
    tids = sorted(
        {
            urlsplit(h["url"]).query.split("tid=")[1].split("&")[0]
            for h in GA4_HITS
            if "G-XXXXX&" not in h["url"]
        }
        | {"G-TEST1234"}
    )
    data: dict[str, Any] = {
        "measurement_ids": tids,
        "allowed_origins": ["https://www.example.com"],
        "upstream": {"url": url, "backoff_initial": 0.01, "backoff_max": 0.05},
    }
    data.update(overrides)
    return from_mapping(data, env={})


@pytest.fixture
async def capture(aiohttp_server: Any) -> tuple[Capture, str]:
    cap = Capture()
    server = await aiohttp_server(cap.app())
    return cap, str(server.make_url("/g/collect"))


@pytest.fixture
async def proxy(aiohttp_client: Clients, capture: tuple[Capture, str]) -> TestClient:
    _, url = capture
    return await aiohttp_client(init_app(proxy_config(url), Metrics()))


def hit_target(hit: dict[str, str]) -> str:
    return "/g/collect?" + urlsplit(hit["url"]).query


FORWARDABLE = [h for h in GA4_HITS if "gcs=G100" not in h["url"] and "G-XXXXX&" not in h["url"]]


async def test_captured_beacons_arrive_sanitised(
    proxy: TestClient, capture: tuple[Capture, str]
) -> None:
    cap, _ = capture
    for hit in FORWARDABLE:
        resp = await proxy.request(
            hit["method"], hit_target(hit), data=hit["body"], headers=HEADERS
        )
        assert resp.status == 204
        assert "Set-Cookie" not in resp.headers
    hits = await cap.wait_for(len(FORWARDABLE))
    assert len(hits) == len(FORWARDABLE)
    originals = {dict(parse_qsl(urlsplit(h["url"]).query))["cid"] for h in FORWARDABLE}
    for got in hits:
        params = dict(parse_qsl(got.query, keep_blank_values=True))
        assert params["cid"] not in originals
        assert params["npa"] == "1"
        assert params["_uip"] == "203.0.113.0"
        assert CLIENT_IP not in got.query + got.body + str(got.headers)
        assert not {"uid", "_fplc", "ur", "uaa", "uafvl", "sct", "sr"} & params.keys()
        assert "?" not in params.get("dl", "")
        lower = {k.lower() for k in got.headers}
        assert not lower & {"cookie", "x-forwarded-for", "referer", "origin", "accept-language"}
        assert not any(k.startswith("sec-ch") for k in lower)
        assert got.headers["User-Agent"].startswith("Mozilla/5.0")
        assert "6261" not in got.headers["User-Agent"]  # minor versions generalised away


async def test_denied_and_foreign_beacons_never_arrive(
    proxy: TestClient, capture: tuple[Capture, str]
) -> None:
    cap, _ = capture
    denied = next(h for h in GA4_HITS if "gcs=G100" in h["url"])
    foreign = next(h for h in GA4_HITS if "G-XXXXX&" in h["url"])
    no_cookie = {k: v for k, v in HEADERS.items() if k != "Cookie"}
    for hit, headers in (
        (denied, HEADERS),
        (foreign, HEADERS),
        (FORWARDABLE[0], no_cookie),
        (FORWARDABLE[0], {**HEADERS, "Sec-GPC": "1"}),
        (FORWARDABLE[0], {**HEADERS, "Origin": "https://evil.example"}),
    ):
        resp = await proxy.post(hit_target(hit), data=hit["body"], headers=headers)
        assert resp.status == 204
    # One consented beacon afterwards: when it has arrived, the earlier ones had their chance.
    await proxy.post(hit_target(FORWARDABLE[0]), headers=HEADERS)
    hits = await cap.wait_for(1)
    await asyncio.sleep(0.05)
    assert len(hits) == 1


async def test_batch_shape_is_kept(proxy: TestClient, capture: tuple[Capture, str]) -> None:
    cap, _ = capture
    query = "v=2&tid=G-TEST1234&cid=111.222&dl=https%3A%2F%2Fwww.example.com%2Fa%3Fgclid%3Dx"
    resp = await proxy.post(
        f"/g/collect?{query}", data="en=page_view&_ee=1\r\nen=scroll&_et=8", headers=HEADERS
    )
    assert resp.status == 204
    (got,) = await cap.wait_for(1)
    assert [dict(parse_qsl(line))["en"] for line in got.body.split("\n")] == ["page_view", "scroll"]
    assert dict(parse_qsl(got.query))["dl"] == "https://www.example.com/a"


async def test_answer_does_not_wait_for_google(
    proxy: TestClient, capture: tuple[Capture, str]
) -> None:
    cap, _ = capture
    cap.gate = asyncio.Event()  # Google hangs until the browser has its answer
    resp = await asyncio.wait_for(proxy.post(hit_target(FORWARDABLE[0]), headers=HEADERS), 5)
    assert resp.status == 204
    assert len(cap.hits) == 0
    cap.gate.set()
    assert len(await cap.wait_for(1)) == 1


@pytest.mark.parametrize(
    ("failures", "attempts", "arrives"),
    [
        ([503, 502], 3, True),
        ([429], 2, True),
        ([400], 1, False),
        ([503] * 5, 6, True),  # retries exhausted (1 + 4): spilled, delivered from the outbox
    ],
)
async def test_retry_policy(
    aiohttp_client: Clients,
    capture: tuple[Capture, str],
    failures: list[int],
    attempts: int,
    arrives: bool,
) -> None:
    cap, url = capture
    cap.fail_with = list(failures)
    metrics = Metrics()
    client = await aiohttp_client(init_app(proxy_config(url), metrics))
    await client.post(hit_target(FORWARDABLE[0]), headers=HEADERS)
    outcome = (
        "analytics_proxy_beacons_forwarded_total"
        if arrives
        else "analytics_proxy_beacons_lost_total"
    )
    labels = {} if arrives else {"reason": "rejected" if 400 in failures else "retries_exhausted"}
    for _ in range(500):  # bounded wait for the final outcome to be counted
        if metrics.registry.get_sample_value(outcome, labels):
            break
        await asyncio.sleep(0.01)
    assert metrics.registry.get_sample_value(outcome, labels) == 1
    assert cap.attempts == attempts
    assert len(cap.hits) == (1 if arrives else 0)


async def test_network_errors_are_retried(aiohttp_client: Clients, aiohttp_server: Any) -> None:
    # Nothing listens on the upstream port at first; Google "comes back" on a retry.
    cap = Capture()
    server = TestServer(cap.app(), port=0)
    await server.start_server()
    url = str(server.make_url("/g/collect"))
    port = server.port
    await server.close()
    config = proxy_config(
        url, upstream={"url": url, "retries": 8, "backoff_initial": 0.05, "backoff_max": 0.2}
    )
    client = await aiohttp_client(init_app(config, Metrics()))
    await client.post(hit_target(FORWARDABLE[0]), headers=HEADERS)
    await asyncio.sleep(0.1)
    revived = TestServer(cap.app(), port=port)
    await revived.start_server()
    try:
        assert len(await cap.wait_for(1)) == 1
    finally:
        await revived.close()


@pytest.mark.parametrize(
    ("method", "target", "body", "status"),
    [
        ("POST", "/g/collect?tid=G-TEST1234&cid=1.2", "", 400),
        ("GET", "/g/collect?v=2&cid=1.2", "", 400),
        ("POST", "/g/collect?v=2&tid=G-TEST1234&dt=%ff", "", 400),
        ("POST", "/g/collect?v=2&tid=G-TEST1234", b"\xff\xfe\xfd", 400),
        ("POST", "/g/collect?v=2&tid=G-TEST1234", "x" * (MAX_BODY + 1), 413),
        ("PUT", "/g/collect?v=2&tid=G-TEST1234", "", 405),
        ("DELETE", "/g/collect", "", 405),
        ("GET", "/g/collect?v=2&tid=G-NOTOURS1&cid=1.2", "", 204),
    ],
)
async def test_bad_input_gets_a_clear_status(
    proxy: TestClient, method: str, target: str, body: str | bytes, status: int
) -> None:
    resp = await proxy.request(method, target, data=body, headers=HEADERS)
    assert resp.status == status
    assert "Set-Cookie" not in resp.headers


async def test_cors_preflight_only_for_allowed_origins(proxy: TestClient) -> None:
    ok = await proxy.options(
        "/g/collect",
        headers={"Origin": "https://www.example.com", "Access-Control-Request-Method": "POST"},
    )
    assert ok.status == 204
    assert ok.headers["Access-Control-Allow-Origin"] == "https://www.example.com"
    assert ok.headers["Access-Control-Allow-Credentials"] == "true"
    refused = await proxy.options(
        "/g/collect",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert refused.status == 403
    assert "Access-Control-Allow-Origin" not in refused.headers


async def test_empty_allowed_origins_answer_cors_for_any_origin(
    aiohttp_client: Clients, capture: tuple[Capture, str]
) -> None:
    cap, url = capture
    client = await aiohttp_client(init_app(proxy_config(url, allowed_origins=[]), Metrics()))
    origin = "http://127.0.0.1:1234"  # any origin, as any origin's beacons are taken
    preflight = await client.options("/g/collect", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == origin
    assert preflight.headers["Access-Control-Allow-Credentials"] == "true"
    assert preflight.headers["Access-Control-Allow-Headers"] == "Content-Type"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Vary"] == "Origin"
    hit = FORWARDABLE[0]
    resp = await client.post(hit_target(hit), data=hit["body"],
                             headers={**HEADERS, "Origin": origin})
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == origin  # echoed, never "*"
    assert resp.headers["Vary"] == "Origin"
    assert len(await cap.wait_for(1)) == 1
    # Not a CORS request: no CORS headers, and a preflight without an Origin is refused.
    assert "Access-Control-Allow-Origin" not in (
        await client.get("/g/collect?v=2&tid=G-TEST1234")).headers
    assert (await client.options("/g/collect")).status == 403


HEADLESS_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/156.0.8078.114 Safari/537.36"
)


@pytest.mark.parametrize("allow", [False, True])
async def test_headless_chromium_is_a_bot_unless_allowed_and_then_is_chrome(
    aiohttp_client: Clients, capture: tuple[Capture, str], allow: bool
) -> None:
    cap, url = capture
    metrics = Metrics()
    config = proxy_config(url, bots={"allow_headless": allow})
    client = await aiohttp_client(init_app(config, metrics))
    hit = FORWARDABLE[0]
    resp = await client.post(hit_target(hit), data=hit["body"],
                             headers={**HEADERS, "User-Agent": HEADLESS_UA})
    assert resp.status == 204  # either way: a bot is not told it was spotted
    bots = metrics.registry.get_sample_value(
        "analytics_proxy_beacons_dropped_total", {"reason": "bot"})
    if not allow:
        assert bots == 1
        await asyncio.sleep(0.2)
        assert cap.hits == []
        return
    assert bots == 0
    (arrived,) = await cap.wait_for(1)
    # Generalised as any Chrome: no "Headless", no minor version.
    assert arrived.headers["User-Agent"] == (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/156.0.0.0 Safari/537.36")


async def test_health_and_readiness(proxy: TestClient) -> None:
    assert (await proxy.get("/healthz")).status == 200
    assert (await proxy.get("/readyz")).status == 200


async def test_metrics_count_received_forwarded_and_dropped(
    aiohttp_client: Clients, capture: tuple[Capture, str]
) -> None:
    cap, url = capture
    config = proxy_config(url, admin={"token": "t0ken"})
    metrics = Metrics()
    client = await aiohttp_client(init_app(config, metrics))
    admin = await aiohttp_client(init_admin_app(config, metrics))
    await client.post(hit_target(FORWARDABLE[0]), headers=HEADERS)
    await client.post(hit_target(FORWARDABLE[0]), headers={"User-Agent": UA})
    await client.post("/g/collect?v=2", headers=HEADERS)
    await cap.wait_for(1)
    await asyncio.sleep(0.05)
    assert (await admin.get("/metrics")).status == 401
    resp = await admin.get("/metrics", headers={"Authorization": "Bearer t0ken"})
    text = await resp.text()
    assert "analytics_proxy_beacons_received_total 3.0" in text
    assert "analytics_proxy_beacons_forwarded_total 1.0" in text
    assert 'analytics_proxy_beacons_dropped_total{reason="no_consent"} 1.0' in text
    assert 'analytics_proxy_beacons_dropped_total{reason="malformed"} 1.0' in text
    assert CLIENT_IP not in text and "cid" not in text


async def test_trusted_proxy_chain_picks_rightmost_untrusted(
    aiohttp_client: Clients, capture: tuple[Capture, str]
) -> None:
    cap, url = capture
    config = proxy_config(url, trusted_proxies=["127.0.0.0/8", "10.0.0.0/8"])
    client = await aiohttp_client(init_app(config, Metrics()))
    headers = {**HEADERS, "X-Forwarded-For": f"198.51.100.9, {CLIENT_IP}, 10.1.2.3"}
    await client.post(hit_target(FORWARDABLE[0]), headers=headers)
    (got,) = await cap.wait_for(1)
    assert dict(parse_qsl(got.query))["_uip"] == "203.0.113.0"


async def test_untrusted_peer_cannot_spoof_its_address(
    aiohttp_client: Clients, capture: tuple[Capture, str]
) -> None:
    cap, url = capture
    client = await aiohttp_client(
        init_app(proxy_config(url, trusted_proxies=["10.0.0.0/8"]), Metrics())
    )
    await client.post(hit_target(FORWARDABLE[0]), headers=HEADERS)
    (got,) = await cap.wait_for(1)
    assert dict(parse_qsl(got.query))["_uip"] == "127.0.0.0"  # the socket peer, truncated


async def post_raw(port: int, *lines: bytes) -> int:
    """One beacon, byte for byte: header lines as given (duplicates kept)."""
    base = [f"{k}: {v}".encode() for k, v in HEADERS.items() if k != "X-Forwarded-For"]
    status, _ = await exchange(port, http_request(
        hit_target(FORWARDABLE[0]).encode(), *base, *lines, b"Connection: close",
        method=b"POST"))
    return status


def uip(hit: Any) -> str | None:
    return dict(parse_qsl(hit.query)).get("_uip")


async def test_a_second_x_forwarded_for_line_appended_by_the_proxy_decides(
    aiohttp_client: Clients, capture: tuple[Capture, str]
) -> None:
    """HAProxy's ``option forwardfor`` adds its own line after the client's: the client's
    claim (first line) never becomes the address, over a real loopback socket."""
    cap, url = capture
    client = await aiohttp_client(init_app(proxy_config(url, trusted_proxies=["127.0.0.0/8"]),
                                           Metrics()))
    assert await post_raw(client.port, b"X-Forwarded-For: 198.51.100.9",
                          f"X-Forwarded-For: {CLIENT_IP}".encode()) == 204
    (got,) = await cap.wait_for(1)
    assert uip(got) == "203.0.113.0"


async def test_a_client_cannot_escape_the_rate_limit_with_its_own_forwarded_for_line(
    aiohttp_client: Clients, capture: tuple[Capture, str]
) -> None:
    """A new spoofed first line per beacon: still one network, so the limit holds."""
    cap, url = capture
    config = proxy_config(url, trusted_proxies=["127.0.0.0/8"], rate_limit={"per_network": 5})
    metrics = Metrics()
    client = await aiohttp_client(init_app(config, metrics))
    for n in range(12):
        await post_raw(client.port, f"X-Forwarded-For: 198.51.{n}.9".encode(),
                       f"X-Forwarded-For: {CLIENT_IP}".encode())
    await cap.wait_for(5)
    await asyncio.sleep(0.05)
    assert len(cap.hits) == 5
    assert metrics.registry.get_sample_value(
        "analytics_proxy_beacons_dropped_total", {"reason": "rate_limited"}) == 7
    assert {uip(hit) for hit in cap.hits} == {"203.0.113.0"}


async def test_forwarded_header_when_configured_over_http(
    aiohttp_client: Clients, capture: tuple[Capture, str]
) -> None:
    cap, url = capture
    config = proxy_config(url, trusted_proxies=["127.0.0.0/8"], forwarded_header="forwarded")
    client = await aiohttp_client(init_app(config, Metrics()))
    # Two lines; X-Forwarded-For (not the configured header) is ignored.
    assert await post_raw(client.port, b"X-Forwarded-For: 198.51.100.9",
                          b'Forwarded: for="198.51.100.77:1234";proto=https',
                          b'Forwarded: for="[2001:db8:cafe::17]:4711", for=127.0.0.1') == 204
    (got,) = await cap.wait_for(1)
    assert uip(got) == "2001:db8:cafe::"


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param([f"X-Forwarded-For: {CLIENT_IP}, unknown".encode()], id="unknown"),
        pytest.param([f"X-Forwarded-For: {CLIENT_IP}".encode(), b"X-Forwarded-For: ;;garbage"],
                     id="garbage in the appended line"),
        pytest.param([f"X-Forwarded-For: {CLIENT_IP}".encode(), b"X-Forwarded-For:"],
                     id="an empty appended line"),
    ],
)
async def test_an_unreadable_hop_sends_no_address_and_is_still_rate_limited(
    aiohttp_client: Clients, capture: tuple[Capture, str], lines: list[bytes]
) -> None:
    """The walk stops at what it cannot read: never the address on its left (the client's
    own claim), no ``_uip``; such beacons share one rate-limit bucket."""
    cap, url = capture
    config = proxy_config(url, trusted_proxies=["127.0.0.0/8"], rate_limit={"per_network": 2})
    metrics = Metrics()
    client = await aiohttp_client(init_app(config, metrics))
    for _ in range(3):
        assert await post_raw(client.port, *lines) == 204
    await cap.wait_for(2)
    await asyncio.sleep(0.05)
    assert [uip(hit) for hit in cap.hits] == [None, None]
    assert metrics.registry.get_sample_value(
        "analytics_proxy_beacons_dropped_total", {"reason": "rate_limited"}) == 1


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
async def test_both_upstream_clients_deliver_the_same_request(
    aiohttp_client: Clients, capture: tuple[Capture, str], client: str
) -> None:
    cap, url = capture
    config = proxy_config(url, upstream={"url": url, "client": client})
    proxy = await aiohttp_client(init_app(config, Metrics()))
    await proxy.post(hit_target(FORWARDABLE[0]), headers=HEADERS)
    (got,) = await cap.wait_for(1)
    sent = {k.lower(): v for k, v in got.headers.items()}
    assert sent["user-agent"].startswith("Mozilla/5.0")
    assert sent["content-type"] == "text/plain;charset=UTF-8"
    assert set(sent) <= {"host", "user-agent", "content-type", "content-length"}


async def test_an_unexpected_handler_error_is_a_counted_503_not_a_500(
    aiohttp_client: Clients, capture: tuple[Capture, str], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cap, url = capture
    metrics = Metrics()
    app = init_app(proxy_config(url), metrics)
    client = await aiohttp_client(app)

    def explode(peer: str | None, forwarded_for: str | None) -> None:
        raise RuntimeError(f"boom {forwarded_for}")  # would leak the address if printed

    monkeypatch.setattr(app[RESOLVER], "resolve", explode)
    resp = await client.post(hit_target(FORWARDABLE[0]), headers=HEADERS)
    assert resp.status == 503
    assert CLIENT_IP not in await resp.text()
    assert metrics.registry.get_sample_value(
        "analytics_proxy_beacons_dropped_total", {"reason": "internal_error"}) == 1
    assert cap.attempts == 0
    logged = [JsonFormatter().format(r) for r in caplog.records]
    assert any('"exception": "RuntimeError"' in line for line in logged)
    assert not any(CLIENT_IP in line for line in logged)


async def test_every_cookie_line_is_read_and_a_denial_in_any_wins(
    aiohttp_client: Clients, capture: tuple[Capture, str]
) -> None:
    cap, url = capture
    metrics = Metrics()
    client = await aiohttp_client(init_app(proxy_config(url), metrics))
    others = {k: v for k, v in HEADERS.items() if k != "Cookie"}
    for lines in (
        [GRANTED, "analytics_consent=denied"],
        ["analytics_consent=denied", GRANTED],
    ):
        headers = CIMultiDict([*others.items(), *(("Cookie", line) for line in lines)])
        resp = await client.post(hit_target(FORWARDABLE[0]), headers=headers)
        assert resp.status == 204
    await client.post(hit_target(FORWARDABLE[0]), headers=HEADERS)  # consented: arrives
    await cap.wait_for(1)
    await asyncio.sleep(0.05)
    assert len(cap.hits) == 1
    assert metrics.registry.get_sample_value(
        "analytics_proxy_beacons_dropped_total", {"reason": "denied"}) == 2


@pytest.mark.parametrize(
    "cookie_lines",
    [
        [GRANTED.encode() + b"; pad=" + b"x" * MAX_COOKIE_HEADER],  # one line, under 431's limit
        [GRANTED.encode(), b"a=" + b"x" * (MAX_COOKIE_HEADER // 2), b"b=" + b"x" * 9000],
        [GRANTED.encode() + b"; x=\xff\xfe"],  # not UTF-8
    ],
    ids=["one line too large", "lines too large together", "undecodable"],
)
async def test_an_unreadable_cookie_header_is_a_counted_consent_error_not_no_cookie(
    aiohttp_client: Clients, capture: tuple[Capture, str], cookie_lines: list[bytes]
) -> None:
    cap, url = capture
    metrics = Metrics()
    # No geo database: the regime is "unknown", here configured to forward without a cookie.
    config = proxy_config(url, consent={"defaults": {"unknown": "forward"}})
    client = await aiohttp_client(init_app(config, metrics))
    headers = [f"{k}: {v}".encode() for k, v in HEADERS.items() if k != "Cookie"]
    cookies = [b"Cookie: " + line for line in cookie_lines]
    target = hit_target(FORWARDABLE[0]).encode()
    status, _ = await exchange(client.port, http_request(
        target, *headers, *cookies, b"Connection: close", method=b"POST"))
    assert status == 204
    status, _ = await exchange(client.port, http_request(  # no cookie: the default forwards
        target, *headers, b"Connection: close", method=b"POST"))
    assert status == 204
    await cap.wait_for(1)
    await asyncio.sleep(0.05)
    assert len(cap.hits) == 1
    assert metrics.registry.get_sample_value(
        "analytics_proxy_beacons_dropped_total", {"reason": "consent_error"}) == 1


async def test_the_largest_query_the_beacon_parser_reads_reaches_it(
    aiohttp_client: Clients, capture: tuple[Capture, str]
) -> None:
    cap, url = capture
    metrics = Metrics()
    client = await aiohttp_client(init_app(proxy_config(url), metrics))
    query = "v=2&tid=G-TEST1234&cid=111.222&en=page_view&ep.pad="
    query += "x" * (MAX_QUERY - len(query))
    assert len(query) == MAX_QUERY
    resp = await client.get(f"/g/collect?{query}", headers=HEADERS)
    assert resp.status == 204
    assert len(await cap.wait_for(1)) == 1
    resp = await client.get(f"/g/collect?{query}x", headers=HEADERS)  # one byte over
    assert resp.status == 414
    assert metrics.registry.get_sample_value(
        "analytics_proxy_beacons_dropped_total", {"reason": "too_large"}) == 1
