"""A lean HTTP/1.1 sender for the one thing the forwarder does: POST to one configured
origin over kept-alive connections, and read the status.

aiohttp's client costs about as much per request as the whole privacy pipeline; this does
the same job on asyncio protocols at a fraction of that. It supports exactly what Google's
collection endpoint needs: TLS, keep-alive, Content-Length, chunked and close-delimited
bodies (read and discarded). Anything else is an error. An error before the request was
written is retried upstream; one after it (no answer in time, the connection closed, a
garbled answer) is ``Unconfirmed``: Google may have taken the request.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from urllib.parse import urlsplit

from proxy.config import Upstream
from proxy.delivery.forward import Unconfirmed
from proxy.delivery.outbound import OutboundRequest

MAX_HEAD = 64 * 1024
# What must never reach the wire: CR/LF and other controls could smuggle headers or requests.
_UNSAFE_HEADER = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE_TARGET = re.compile(r"[\x00-\x20\x7f]")
IDLE_TIMEOUT = 15.0  # seconds before an idle connection is closed rather than reused


def _expire(waiter: asyncio.Future[int]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class UpstreamProtocolError(ConnectionError):
    """The answer was not HTTP/1.x as expected. The message never quotes the request."""


class _Connection(asyncio.Protocol):
    """One connection, one request at a time; the answer resolves ``waiter`` with a status."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.reusable = True
        self.received = False  # any byte of the current answer
        self.idle_since = time.monotonic()
        self._status = 0
        self._body_left = -1  # bytes of body still expected; -1: still reading the head
        self._chunked = False
        self._until_close = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if self._until_close and self._status:
                waiter.set_result(self._status)
            else:
                waiter.set_exception(ConnectionResetError("upstream closed the connection"))

    def request(self, data: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        self.received = False
        self._status, self._body_left, self._chunked, self._until_close = 0, -1, False, False
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.received = True
        self.buffer += data
        try:
            self._advance()
        except (ValueError, UpstreamProtocolError) as exc:
            self.reusable = False
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(UpstreamProtocolError(type(exc).__name__))
            self.close()

    def _advance(self) -> None:
        if self.waiter is None or self.waiter.done():
            raise UpstreamProtocolError("unsolicited data")
        if self._body_left < 0 and not self._chunked:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    raise UpstreamProtocolError("head too large")
                return
            self._read_head(bytes(self.buffer[:end]))
            del self.buffer[: end + 4]
            if self._status < 200:  # an interim answer: the real one follows
                self._status = 0
                self._advance()
                return
        if self._chunked:
            self._read_chunks()
        elif self._until_close:
            self.buffer.clear()
        else:
            take = min(self._body_left, len(self.buffer))
            del self.buffer[:take]
            self._body_left -= take
            if self._body_left == 0:
                self._finish()

    def _read_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        if not version.startswith(b"HTTP/1."):
            raise UpstreamProtocolError("not HTTP/1.x")
        self._status = int(rest[:3])
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                self._chunked = True
            elif name == b"connection" and b"close" in value.lower():
                self.reusable = False
        if version == b"HTTP/1.0":
            self.reusable = False
        if self._status < 200 or self._status in (204, 304):
            self._body_left = 0
        elif self._chunked:
            self._body_left = -1
        elif length is not None:
            self._body_left = length
        else:
            self._until_close = True
            self.reusable = False
            return
        if self._body_left == 0 and self._status >= 200:
            self._finish()

    def _read_chunks(self) -> None:
        while True:
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                return
            size = int(bytes(self.buffer[:line_end]).split(b";")[0], 16)
            if size == 0:
                # "0" CRLF, optional trailer lines, then an empty line.
                end = self.buffer.find(b"\r\n\r\n", line_end)
                if end < 0:
                    return
                del self.buffer[: end + 4]
                self._chunked = False
                self._finish()
                return
            if len(self.buffer) < line_end + 2 + size + 2:
                return
            del self.buffer[: line_end + 2 + size + 2]

    def _finish(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(self._status)
        self.idle_since = time.monotonic()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class FastSender:
    """Keep-alive pool of at most ``max_connections`` to the configured upstream origin."""

    def __init__(self, config: Upstream) -> None:
        url = urlsplit(config.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("upstream.url: must be an http(s) URL")
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        default_port = self._port == (443 if url.scheme == "https" else 80)
        host_header = self._host if default_port else f"{self._host}:{self._port}"
        # Everything but the query, length and User-Agent is the same on every request.
        self._start = f"POST {url.path or '/'}?".encode()
        self._fixed = (
            f" HTTP/1.1\r\nHost: {host_header}\r\n"
            "Content-Type: text/plain;charset=UTF-8\r\nUser-Agent: "
        ).encode()
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(config.max_connections)
        self._timeout = config.timeout
        self._connect_timeout = config.connect_timeout

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(_Connection, self._host, self._port, ssl=self._ssl),
            self._connect_timeout,
        )
        return conn

    def _encode(self, request: OutboundRequest) -> bytes:
        body = request.body.encode()
        agent = request.user_agent.encode()
        if _UNSAFE_HEADER.search(request.user_agent) or _UNSAFE_TARGET.search(request.query):
            raise ValueError("refusing a header or target with control characters")
        return b"".join((self._start, request.query.encode(), self._fixed, agent,
                         b"\r\nContent-Length: ", str(len(body)).encode(), b"\r\n\r\n", body))

    async def send(self, request: OutboundRequest) -> int:
        data = self._encode(request)
        async with self._slots:
            conn, reused = self._take_idle(), True
            if conn is None:
                conn, reused = await self._connect(), False
            try:
                status = await self._exchange(conn, data)
            except ConnectionResetError:
                if not reused or conn.received:
                    raise Unconfirmed("the connection closed before the answer") from None
                # The server closed an idle connection as we wrote: nothing was received,
                # so the request was not processed. Once, on a fresh connection.
                conn = await self._connect()
                status = await self._answer(conn, data)
            except (TimeoutError, UpstreamProtocolError) as exc:
                raise Unconfirmed(type(exc).__name__) from None
            if conn.reusable:
                self._idle.append(conn)
            else:
                conn.close()
            return status

    async def _answer(self, conn: _Connection, data: bytes) -> int:
        """An exchange whose every failure comes after the request was written."""
        try:
            return await self._exchange(conn, data)
        except (TimeoutError, ConnectionError) as exc:
            raise Unconfirmed(type(exc).__name__) from None

    async def _exchange(self, conn: _Connection, data: bytes) -> int:
        # asyncio.wait_for's behaviour (TimeoutError when no answer came in time, the
        # connection closed on any failure) without the task and future it adds per request.
        timer = None
        try:
            waiter = conn.request(data)
            timer = asyncio.get_running_loop().call_later(self._timeout, _expire, waiter)
            return await waiter
        except BaseException:
            conn.close()
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable and now - conn.idle_since < IDLE_TIMEOUT:
                return conn
            conn.close()
        return None

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
