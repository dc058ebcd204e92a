"""Requests written byte for byte on a loopback socket, for what no HTTP client will send:
over-long lines, invalid bytes, broken framing."""

from __future__ import annotations

import asyncio

TIMEOUT = 5.0  # a liveness bound: the server answers and closes long before


def http_request(
    target: bytes, *headers: bytes, method: bytes = b"GET", body: bytes = b""
) -> bytes:
    """A request line, ``Host`` and the given header lines (each without its CRLF), then
    the body as given."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: proxy.test", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def exchange(port: int, *parts: bytes, pause: float = 0.0) -> tuple[int, bytes]:
    """Write ``parts`` (``pause`` seconds apart) and read the answer until the server
    closes; returns the status and the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for index, part in enumerate(parts):
            if index and pause:
                await asyncio.sleep(pause)
            writer.write(part)
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    return int(answer.split(b" ", 2)[1]), answer
