"""The lean upstream sender against real loopback HTTP servers of every answer shape."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from proxy.config import from_mapping
from proxy.delivery.forward import Unconfirmed
from proxy.delivery.outbound import OutboundRequest
from proxy.delivery.transport import FastSender

REQUEST = OutboundRequest("v=2&tid=G-TEST1234&cid=1.2&dt=a%20b", "en=a\nen=b", "Mozilla/5.0 (X)")


def sender_for(url: str, **upstream: Any) -> FastSender:
    config = from_mapping({"measurement_ids": ["G-TEST1234"],
                           "upstream": {"url": url, **upstream}}, env={})
    return FastSender(config.upstream)


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []

    def handler(self, respond: Any) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = (await request.read()).decode()
            peer = request.transport.get_extra_info("peername") if request.transport else None
            self.requests.append((request.rel_url.raw_query_string, body,
                                  dict(request.headers), peer))
            return await respond(request)

        return handle


async def no_content(request: web.Request) -> web.StreamResponse:
    return web.Response(status=204)


async def with_body(request: web.Request) -> web.StreamResponse:
    return web.Response(status=200, body=b"x" * 5000)


async def chunked(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(status=200)
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for part in (b"abc", b"d" * 3000, b"e"):
        await resp.write(part)
    await resp.write_eof()
    return resp


async def closing(request: web.Request) -> web.StreamResponse:
    return web.Response(status=503, headers={"Connection": "close"})


async def serve(aiohttp_server: Any, respond: Any) -> tuple[Recorder, str]:
    recorder = Recorder()
    app = web.Application()
    app.router.add_post("/g/collect", recorder.handler(respond))
    server = await aiohttp_server(app)
    return recorder, str(server.make_url("/g/collect"))


@pytest.mark.parametrize(("respond", "status"), [
    (no_content, 204), (with_body, 200), (chunked, 200), (closing, 503),
])
async def test_every_answer_shape_reads_its_status_and_the_next_request_works(
        aiohttp_server: Any, respond: Any, status: int) -> None:
    recorder, url = await serve(aiohttp_server, respond)
    sender = sender_for(url)
    try:
        assert [await sender.send(REQUEST) for _ in range(3)] == [status] * 3
    finally:
        await sender.close()
    query, body, headers, _ = recorder.requests[0]
    assert (query, body) == (REQUEST.query, REQUEST.body)
    assert headers["User-Agent"] == REQUEST.user_agent
    assert headers["Content-Type"] == "text/plain;charset=UTF-8"
    assert {h.lower() for h in headers} == {"host", "user-agent", "content-type",
                                            "content-length"}


async def test_keep_alive_reuses_one_connection(aiohttp_server: Any) -> None:
    recorder, url = await serve(aiohttp_server, no_content)
    sender = sender_for(url)
    try:
        for _ in range(20):
            await sender.send(REQUEST)
    finally:
        await sender.close()
    assert len({peer for *_, peer in recorder.requests}) == 1


async def test_concurrency_is_bounded_by_max_connections(aiohttp_server: Any) -> None:
    recorder, url = await serve(aiohttp_server, no_content)
    sender = sender_for(url, max_connections=3)
    try:
        assert set(await asyncio.gather(*(sender.send(REQUEST) for _ in range(30)))) == {204}
    finally:
        await sender.close()
    assert len({peer for *_, peer in recorder.requests}) <= 3


async def test_a_hanging_upstream_is_unconfirmed_not_a_retryable_error(
    aiohttp_server: Any,
) -> None:
    # The request was written: Google may have taken it, so it must not look retryable.
    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.Response(status=204)

    _, url = await serve(aiohttp_server, hang)
    sender = sender_for(url, timeout=0.2)
    with pytest.raises(Unconfirmed) as raised:
        await sender.send(REQUEST)
    assert not isinstance(raised.value, OSError | TimeoutError)
    await sender.close()


async def test_nothing_listening_is_a_connection_error() -> None:
    sender = sender_for("http://127.0.0.1:9/g/collect", connect_timeout=1.0)
    with pytest.raises(OSError):
        await sender.send(REQUEST)


async def test_garbage_answer_is_unconfirmed() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sender = sender_for(f"http://127.0.0.1:{port}/g/collect")
    try:
        with pytest.raises(Unconfirmed):
            await sender.send(REQUEST)
    finally:
        await sender.close()
        server.close()


async def test_a_connection_the_server_closed_while_idle_is_replaced(aiohttp_server: Any) -> None:
    recorder, url = await serve(aiohttp_server, no_content)
    sender = sender_for(url)
    try:
        await sender.send(REQUEST)
        for conn in sender._idle:  # the server's keep-alive timeout, simulated
            assert conn.transport is not None
            conn.transport.abort()
        await asyncio.sleep(0.05)
        assert await sender.send(REQUEST) == 204
    finally:
        await sender.close()
    assert len(recorder.requests) == 2


def test_control_characters_never_reach_the_wire() -> None:
    sender = sender_for("http://127.0.0.1:9/g/collect")
    with pytest.raises(ValueError):
        sender._encode(OutboundRequest("v=2", "", "Mozilla\r\nX-Forwarded-For: 1.2.3.4"))


async def test_a_connection_closed_after_the_request_was_read_is_unconfirmed() -> None:
    # Google read the request (and may have counted it), then the connection dropped.
    async def read_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(read_then_close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sender = sender_for(f"http://127.0.0.1:{port}/g/collect")
    try:
        with pytest.raises(Unconfirmed):
            await sender.send(REQUEST)
    finally:
        await sender.close()
        server.close()
