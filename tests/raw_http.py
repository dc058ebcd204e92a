"""Requests written byte for byte on a loopback socket, for what no HTTP client will send:
over-long lines, invalid bytes, broken framing, trickled and abandoned requests."""

from __future__ import annotations

import asyncio
import socket
import struct

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


async def trickle(
    port: int,
    head: bytes,
    drip: bytes = b"x",
    interval: float = 0.1,
    drips: int | None = None,
    limit: float = TIMEOUT,
) -> tuple[bytes, float]:
    """Write ``head``, then ``drip`` every ``interval`` seconds (``drips`` times, or until
    the server closes the connection): a slow client, headers or body trickled. Returns what
    the server wrote before closing and the seconds from connecting to the close. A server
    closing on a client still writing may reset the connection, and the client's kernel
    then drops what it had not yet handed over: the answer can be empty."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def dripping() -> None:
        writer.write(head)
        sent = 0
        while drips is None or sent < drips:
            await asyncio.sleep(interval)
            writer.write(drip)
            await writer.drain()
            sent += 1

    async def answer() -> bytes:
        received = b""
        try:
            while chunk := await reader.read(65536):
                received += chunk
        except ConnectionResetError:
            pass
        return received

    client = asyncio.create_task(dripping())
    try:
        return await asyncio.wait_for(answer(), limit), loop.time() - started
    finally:
        client.cancel()
        await asyncio.gather(client, return_exceptions=True)  # ends in a reset, or not
        writer.close()


async def abort(port: int, data: bytes, *, reset: bool = False) -> None:
    """Write ``data`` (a request cut short) and go away: closing the socket (FIN), or with
    ``reset`` aborting it (RST), as a browser does when a tab closes mid-upload."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    await asyncio.sleep(0.05)  # the server has the headers and starts reading the body
    if reset:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
