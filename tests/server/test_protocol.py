"""Requests aiohttp refuses before any handler runs, sent byte for byte over a real loopback
socket to the real runner: each class gets its status (414, 431 or 400, never 500), is counted
as a dropped beacon, and no log record names the client, neither the socket's peer
(127.0.0.1) nor a trusted X-Forwarded-For address or its /24, in any formatter."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.http_parser
import aiohttp.web_protocol
import pytest
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from proxy.config import Config, from_mapping
from proxy.observe.logs import JsonFormatter
from proxy.observe.metrics import Metrics
from proxy.server.admin import admin_runner, init_admin_app
from proxy.server.protocol import MAX_HEADER_FIELD, MAX_HEADERS, MAX_REQUEST_LINE, refusal
from proxy.server.public import init_app, public_runner
from tests.capture import Capture
from tests.raw_http import abort, exchange, http_request, trickle
from tests.serve_process import start_serve, wait_until_up

PEER = "127.0.0.1"
FORWARDED = "203.0.113.77"
ADDRESSES = (PEER, FORWARDED, "203.0.113.")  # the /24 as a prefix, too
XFF = f"X-Forwarded-For: {FORWARDED}".encode()
BEACON = b"/g/collect?v=2&tid=G-TEST1234&cid=111.222"

# name, bytes on the wire, status, counted drop reason
BAD_REQUESTS = [
    ("request line over the limit",
     http_request(BEACON + b"&ep.pad=" + b"x" * MAX_REQUEST_LINE, XFF), 414, "too_large"),
    ("header line over the limit",
     http_request(BEACON, XFF, b"Cookie: a=" + b"x" * MAX_HEADER_FIELD), 431, "too_large"),
    ("too many header lines",
     http_request(BEACON, XFF, *(b"X-Extra-%d: 1" % i for i in range(MAX_HEADERS + 1))),
     431, "too_large"),
    ("request line without a target", b"GET\r\n" + XFF + b"\r\n\r\n", 400, "malformed"),
    ("bad method token", http_request(BEACON, XFF, method=b"G@T"), 400, "malformed"),
    ("unknown HTTP version",
     b"GET " + BEACON + b" HTTP/9.Z\r\nHost: proxy.test\r\n" + XFF + b"\r\n\r\n", 400, "malformed"),
    ("control byte in a header name", http_request(BEACON, XFF, b"X-Bad\x01Name: 1"),
     400, "malformed"),
    ("NUL in a header value", http_request(BEACON, XFF, b"X-Bad: a\x00b"), 400, "malformed"),
    ("no Host in HTTP/1.1",
     b"GET " + BEACON + b" HTTP/1.1\r\n" + XFF + b"\r\n\r\n", 400, "malformed"),
    ("invalid chunked encoding",
     http_request(BEACON, XFF, b"Transfer-Encoding: chunked", method=b"POST",
                  body=b"zz\r\nabc\r\n0\r\n\r\n"), 400, "malformed"),
    ("Content-Length beside chunked",
     http_request(BEACON, XFF, b"Content-Length: 5", b"Transfer-Encoding: chunked",
                  method=b"POST", body=b"0\r\n\r\n"), 400, "malformed"),
    # aiohttp's C parser takes these two, its pure-Python one the second: refused all the same.
    ("HTTP/0.9 request line",
     b"GET " + BEACON + b" HTTP/0.9\r\nHost: proxy.test\r\n" + XFF + b"\r\n\r\n", 400, "malformed"),
    ("HTTP/2.0 request line",
     b"GET " + BEACON + b" HTTP/2.0\r\nHost: proxy.test\r\n" + XFF + b"\r\n\r\n", 400, "malformed"),
    ("request line without a version", b"GET " + BEACON + b"\r\n" + XFF + b"\r\n\r\n",
     400, "malformed"),
]

def proxy_config(upstream: str, **overrides: Any) -> Config:
    data = {"measurement_ids": ["G-TEST1234"], "upstream": {"url": upstream}, **overrides}
    return from_mapping(data, env={})


PARSERS = {"c": getattr(aiohttp.http_parser, "HttpRequestParserC", None),
           "python": aiohttp.http_parser.HttpRequestParserPy}


@dataclass
class Served:
    port: int
    metrics: Metrics

    def dropped(self, reason: str) -> float | None:
        return self.metrics.registry.get_sample_value(
            "analytics_proxy_beacons_dropped_total", {"reason": reason})


@pytest.fixture(params=sorted(PARSERS))
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """aiohttp's C parser (llhttp) and its pure-Python one (AIOHTTP_NO_EXTENSIONS) differ in
    how they report a bad request: both are served."""
    cls = PARSERS[request.param]
    if cls is None:
        # aiohttp's wheels ship it: missing means a source build without a compiler.
        if os.environ.get("CI"):
            pytest.fail("aiohttp's C parser is not built: serve would run without it")
        pytest.skip("aiohttp's C parser is not built here (a source install of aiohttp)")
    monkeypatch.setattr(aiohttp.web_protocol, "HttpRequestParser", cls)
    yield request.param


@pytest.fixture
async def served(aiohttp_server: Any, parser: str) -> AsyncIterator[Served]:
    """The public app on the runner ``serve`` uses, behind a trusted loopback proxy."""
    upstream = await aiohttp_server(Capture().app())
    metrics = Metrics()
    config = proxy_config(str(upstream.make_url("/g/collect")), trusted_proxies=["127.0.0.0/8"])
    runner = public_runner(init_app(config, metrics))
    await runner.setup()
    await web.TCPSite(runner, PEER, 0).start()
    yield Served(runner.addresses[0][1], metrics)
    await runner.cleanup()


def assert_no_address(records: list[logging.LogRecord]) -> None:
    """Neither our formatter nor logging's own (which prints arguments and tracebacks)
    would write an address from these records."""
    plain = logging.Formatter("%(name)s %(message)s")
    for record in records:
        for text in (record.getMessage(), plain.format(record), JsonFormatter().format(record)):
            assert not any(address in text for address in ADDRESSES), text


@pytest.mark.parametrize(
    ("wire", "status", "reason"),
    [pytest.param(wire, status, reason, id=name) for name, wire, status, reason in BAD_REQUESTS],
)
async def test_a_refused_request_gets_its_status_is_counted_and_logs_no_address(
    served: Served, caplog: pytest.LogCaptureFixture, wire: bytes, status: int, reason: str
) -> None:
    caplog.set_level(logging.DEBUG)
    got, answer = await exchange(served.port, wire)
    assert got == status
    assert answer.startswith(b"HTTP/1.1 ")  # never the client's own version
    assert served.dropped(reason) == 1
    assert served.metrics.registry.get_sample_value("analytics_proxy_beacons_received_total") == 1
    assert FORWARDED.encode() not in answer and b"x" * 100 not in answer  # nothing echoed
    refused = [r for r in caplog.records if r.name == "proxy.server.protocol"]
    assert [(r.__dict__["status"], r.__dict__["reason"]) for r in refused] == [(status, reason)]
    assert_no_address(caplog.records)


# llhttp (the C parser) reports a broken body as a parse error queued behind the request
# still waiting for its body: the protocol hands it to that body's reader.
async def test_a_broken_chunked_body_after_the_headers_is_a_counted_400(
    served: Served, parser: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    head = http_request(BEACON, XFF, b"Transfer-Encoding: chunked", method=b"POST")
    got, answer = await exchange(served.port, head, b"zz\r\nabc\r\n0\r\n\r\n", pause=0.2)
    assert got == 400
    assert answer.count(b"HTTP/1.1 ") == 1  # one answer, then the close
    assert served.dropped("malformed") == 1
    assert served.dropped("internal_error") == 0
    assert errors(caplog.records) == []
    assert_no_address(caplog.records)


@pytest.mark.parametrize(
    ("status", "exc", "expected"),
    [
        (400, LineTooLong(b"GET /...", MAX_REQUEST_LINE), (414, "too_large")),
        (400, LineTooLong(b"Cookie...", MAX_HEADER_FIELD), (431, "too_large")),
        (400, BadHttpMessage("Too many headers received"),
         (431, "too_large")),
        (400, BadHttpMessage("Missing 'Host' header in request."),
         (400, "malformed")),
        (400, None, (400, "malformed")),
        (500, RuntimeError("boom"), (503, "internal_error")),
        (504, None, (503, "internal_error")),
    ],
    ids=repr,
)
def test_refusal_maps_aiohttp_errors_to_status_and_reason(
    status: int, exc: BaseException | None, expected: tuple[int, str]
) -> None:
    assert refusal(status, exc, MAX_REQUEST_LINE) == expected


def test_the_request_line_and_header_limits_differ() -> None:
    # A LineTooLong says which limit it crossed only by the limit's value.
    assert MAX_REQUEST_LINE != MAX_HEADER_FIELD


async def test_an_admin_handler_error_is_a_503_without_the_address(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    metrics = Metrics()
    config = proxy_config("http://127.0.0.1:9/g/collect")
    runner = admin_runner(init_admin_app(config, metrics))
    await runner.setup()
    await web.TCPSite(runner, PEER, 0).start()

    def explode() -> bytes:
        raise RuntimeError(f"boom {FORWARDED}")  # would leak the address if printed

    monkeypatch.setattr(metrics, "exposition", explode)
    try:
        status, answer = await exchange(
            runner.addresses[0][1], http_request(b"/metrics", XFF, b"Connection: close"))
    finally:
        await runner.cleanup()
    assert status == 503
    assert b"boom" not in answer
    logged = [JsonFormatter().format(r) for r in caplog.records]
    assert any('"exception": "RuntimeError"' in line for line in logged)
    assert not any(address in line for line in logged for address in ADDRESSES)


SERVE_YAML = (
    "measurement_ids: [G-TEST1234]\n"
    "trusted_proxies: [127.0.0.0/8]\n"
    "upstream: {url: stdout, shutdown_grace: 0}\n"
    "log: {level: debug}\n"
)


async def test_serve_logs_no_address_for_any_refused_request(tmp_path: Path) -> None:
    proc, port, admin = start_serve(tmp_path, "proxy", SERVE_YAML)
    try:
        wait_until_up(port)
        for _, wire, status, _ in BAD_REQUESTS:
            assert (await exchange(port, wire))[0] == status
        # A beacon the pipeline drops (no consent), from the same forwarded address.
        beacon = http_request(BEACON, XFF, b"Connection: close", method=b"POST")
        assert (await exchange(port, beacon))[0] == 204
        metrics = (await exchange(admin, http_request(b"/metrics", b"Connection: close")))[1]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    entries = [json.loads(line) for line in err.splitlines() + out.splitlines() if line.strip()]
    refused = [e["status"] for e in entries if e["message"] == "request refused"]
    assert refused == [status for _, _, status, _ in BAD_REQUESTS]
    for entry in entries:
        # The configured listen address is the proxy's own, not a client's.
        text = json.dumps({k: v for k, v in entry.items() if k != "host"})
        assert not any(address in text for address in ADDRESSES), text
    counts = metrics.decode()
    too_large = sum(1 for _, _, _, reason in BAD_REQUESTS if reason == "too_large")
    malformed = len(BAD_REQUESTS) - too_large
    assert f'beacons_dropped_total{{reason="too_large"}} {too_large}.0' in counts
    assert f'beacons_dropped_total{{reason="malformed"}} {malformed}.0' in counts


# Status lines, client faults in the body, slow and abandoned requests ----------------------

HEADER_TIMEOUT = 0.5  # the tests' read timeouts: short, the defaults are 10 s
BODY_TIMEOUT = 0.5
SLACK = 2.0  # how late a timeout may close a connection on a busy CI machine (liveness)
POST_HEAD = http_request(BEACON, XFF, b"Content-Length: 64", method=b"POST")


@pytest.fixture
async def timed(aiohttp_server: Any, parser: str) -> AsyncIterator[Served]:
    """``served`` with short read timeouts."""
    upstream = await aiohttp_server(Capture().app())
    metrics = Metrics()
    config = proxy_config(
        str(upstream.make_url("/g/collect")),
        trusted_proxies=["127.0.0.0/8"],
        listen={"header_timeout": HEADER_TIMEOUT, "body_timeout": BODY_TIMEOUT,
                "keepalive_timeout": 1.0},
    )
    runner = public_runner(init_app(config, metrics))
    await runner.setup()
    await web.TCPSite(runner, PEER, 0).start()
    yield Served(runner.addresses[0][1], metrics)
    await runner.cleanup()


def errors(records: list[logging.LogRecord]) -> list[str]:
    """Records at ERROR or above: a client's fault must never log as the proxy's."""
    return [f"{r.name}: {r.getMessage()}" for r in records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        pytest.param(b"GET /healthz HTTP/1.0\r\n\r\n", b"HTTP/1.1 200 OK\r\n", id="HTTP/1.0"),
        pytest.param(http_request(BEACON, b"Connection: close", method=b"POST"),
                     b"HTTP/1.1 204 No Content\r\n", id="HTTP/1.1"),
    ],
)
async def test_every_status_line_says_http_1_1(
    served: Served, wire: bytes, expected: bytes
) -> None:
    _, answer = await exchange(served.port, wire)
    assert answer.startswith(expected)
    # An HTTP/1.1 answer that will not keep the connection must say so.
    assert b"\r\nConnection: close\r\n" in answer


@pytest.mark.parametrize("encoding", [b"gzip", b"deflate", b"br"])
async def test_an_undecodable_body_is_a_400_counted_malformed_and_logged_as_no_error(
    served: Served, caplog: pytest.LogCaptureFixture, encoding: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    wire = http_request(BEACON, XFF, b"Content-Encoding: " + encoding, b"Content-Length: 10",
                        method=b"POST", body=b"0123456789")
    status, answer = await exchange(served.port, wire)  # read until the proxy closes
    assert (status, answer[:9]) == (400, b"HTTP/1.1 ")
    assert served.dropped("malformed") == 1
    assert served.dropped("internal_error") == 0
    assert errors(caplog.records) == []
    assert_no_address(caplog.records)


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
async def test_an_upload_abandoned_midway_counts_as_client_aborted(
    served: Served, caplog: pytest.LogCaptureFixture, reset: bool
) -> None:
    caplog.set_level(logging.DEBUG)
    await abort(served.port, POST_HEAD + b"v=2&tid=G-TEST1234", reset=reset)
    for _ in range(100):  # the server notices the close in its own time (a liveness bound)
        if served.dropped("client_aborted"):
            break
        await asyncio.sleep(0.05)
    assert served.dropped("client_aborted") == 1
    assert served.dropped("internal_error") == 0
    assert errors(caplog.records) == []


# A client that stops writing before the timeout reads the 408 in full; one that goes on
# writing may see the close as a reset instead (the proxy does not linger): either way the
# connection is closed on time, however many bytes keep arriving, and the request counted.
DRIPS = [pytest.param(3, id="paused"), pytest.param(None, id="dripping-on")]


@pytest.mark.parametrize("drips", DRIPS)
async def test_headers_trickled_past_the_header_timeout_get_a_408_and_the_close(
    timed: Served, caplog: pytest.LogCaptureFixture, drips: int | None
) -> None:
    caplog.set_level(logging.DEBUG)
    answer, took = await trickle(timed.port, b"GET " + BEACON + b" HTTP/1.1\r\n", b"X", 0.1,
                                 drips)
    if drips is not None or answer:
        assert answer == (
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 20\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
            b"408 Request Timeout\n")
    assert HEADER_TIMEOUT <= took < HEADER_TIMEOUT + SLACK
    assert timed.dropped("timeout") == 1
    assert timed.metrics.registry.get_sample_value("analytics_proxy_beacons_received_total") == 1
    assert errors(caplog.records) == []
    assert_no_address(caplog.records)


@pytest.mark.parametrize("drips", DRIPS)
async def test_a_body_trickled_past_the_body_timeout_gets_a_408_and_the_close(
    timed: Served, caplog: pytest.LogCaptureFixture, drips: int | None
) -> None:
    caplog.set_level(logging.DEBUG)
    answer, took = await trickle(timed.port, POST_HEAD + b"v=2", b"&", 0.1, drips)
    if drips is not None or answer:
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert b"\r\nConnection: close\r\n" in answer
    assert BODY_TIMEOUT <= took < BODY_TIMEOUT + SLACK
    assert timed.dropped("timeout") == 1
    assert timed.dropped("internal_error") == 0
    assert errors(caplog.records) == []


async def test_a_connection_that_sends_nothing_is_closed_silently(timed: Served) -> None:
    answer, took = await trickle(timed.port, b"", drips=0)
    assert answer == b""  # nothing was asked: no answer, nothing counted
    assert HEADER_TIMEOUT <= took < HEADER_TIMEOUT + SLACK
    assert timed.metrics.registry.get_sample_value("analytics_proxy_beacons_received_total") == 0


async def test_a_kept_alive_connection_times_out_idle_and_each_request_has_its_own_clock(
    timed: Served,
) -> None:
    healthz = b"GET /healthz HTTP/1.1\r\nHost: proxy.test\r\n\r\n"
    # Idle after one answer: closed after keepalive_timeout (1 s), not before.
    answer, took = await trickle(timed.port, healthz, drips=0)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"ok\n")
    assert 1.0 <= took < 1.0 + SLACK
    # A second request started after a pause longer than header_timeout: its clock starts at
    # its first byte, so a complete request in time is answered, a trickled one is not.
    reader, writer = await asyncio.open_connection(PEER, timed.port)
    try:
        writer.write(healthz)
        first = await reader.readuntil(b"ok\n")
        await asyncio.sleep(HEADER_TIMEOUT + 0.2)
        writer.write(healthz)
        second = await asyncio.wait_for(reader.readuntil(b"ok\n"), SLACK)
        assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 200")
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        late = await asyncio.wait_for(reader.read(), HEADER_TIMEOUT + SLACK)
        assert late.startswith(b"HTTP/1.1 408 ")
    finally:
        writer.close()


@pytest.mark.parametrize("parser", ["c"], indirect=True)
async def test_many_slow_connections_are_all_closed_by_the_proxy(
    timed: Served, parser: str
) -> None:
    """1,500 slow clients at once, headers or body trickled: every one is answered 408 and
    closed by the proxy within its timeout, none is left open, each is counted."""
    slow_headers = b"GET " + BEACON + b" HTTP/1.1\r\n"
    clients = []
    for index in range(1500):
        head = slow_headers if index % 2 else POST_HEAD
        clients.append(asyncio.create_task(trickle(timed.port, head, b"X", 0.2, limit=30)))
        if index % 100 == 99:
            await asyncio.sleep(0.05)  # connect in bursts the listen backlog takes
    results = await asyncio.gather(*clients)  # each returns once the proxy closed it
    assert all(answer.startswith(b"HTTP/1.1 408 ") or not answer for answer, _ in results)
    assert max(took for _, took in results) < HEADER_TIMEOUT + 5 * SLACK
    assert timed.dropped("timeout") == 1500
