"""The HTTP layer under the applications: request-line and header limits, read timeouts, the
status line, and the answer to a request aiohttp refuses before any handler runs.

aiohttp answers such a request itself (always 400) and logs ``Error handling request from
<peer address>``, with an exception whose text quotes the request's bytes. Here one method is
replaced, ``RequestHandler.handle_error``: an over-long request line is answered 414, too many
or too long header lines 431, anything else unparseable (an HTTP version other than 1.0 and
1.1 included) 400, and an error no handler caught 503, never 500. The answer is a bare status
line; the record names no address and, for a refused request, carries no exception (the
parser's text quotes the request); the public application counts the refusal as a dropped
beacon. ``Runner`` (an ``AppRunner``) is what puts that handler class in place: aiohttp
offers no other way to choose it.

aiohttp has no read timeouts and writes the client's own version in the status line
(``HTTP/0.9 400``). Here a request's headers must arrive within ``header_timeout`` of its first
byte (of the connection, for its first request), else it is answered 408 and the connection
closed (silently if not a byte came); its body within ``body_timeout`` of its headers, else
reading it raises ``BodyTimeout`` (the handler answers 408); an idle kept-alive connection is
closed after ``keepalive_timeout``. Every status line says ``HTTP/1.1``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion10, HttpVersion11, RawRequestMessage, StreamWriter
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict

from proxy.config import BODY_TIMEOUT, HEADER_TIMEOUT, KEEPALIVE_TIMEOUT
from proxy.ingest.beacon import MAX_QUERY
from proxy.ingest.cookies import MAX_COOKIE_HEADER

log = logging.getLogger(__name__)

# One header line: the largest Cookie header the consent gate reads, its name and some slack.
MAX_HEADER_FIELD = MAX_COOKIE_HEADER + 1024
# The request line: method, "/g/collect?", the largest query the beacon parser reads and the
# version. It must differ from MAX_HEADER_FIELD: the parsers tell which limit a request
# crossed only by the limit's value. Larger, so that a header line the pure-Python parser
# refuses while it is still arriving was too long anyway.
MAX_REQUEST_LINE = MAX_QUERY + 2048
MAX_HEADERS = 128  # a browser sends about 20; load balancers add a few
# The public application's handler_args (any runner, the tests' included).
PUBLIC_LIMITS: dict[str, Any] = {
    "max_line_size": MAX_REQUEST_LINE,
    "max_field_size": MAX_HEADER_FIELD,
    "max_headers": MAX_HEADERS,
}

TOO_MANY_HEADERS = "Too many headers received"  # aiohttp's message, both parsers
VERSIONS = (HttpVersion10, HttpVersion11)  # HTTP/0.9 has no headers; HTTP/2 is not text
_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 20\r\n"
    b"Cache-Control: no-store\r\n"
    b"Connection: close\r\n\r\n"
    b"408 Request Timeout\n"
)

# Told the drop reason of every refused request: too_large, malformed, timeout or
# internal_error.
OnRefused = Callable[[str], None]


class UnsupportedVersion(BadHttpMessage):
    """A request line whose version is neither HTTP/1.0 nor HTTP/1.1 (aiohttp's C parser
    takes ``HTTP/0.9`` and ``HTTP/2.0``, its pure-Python one ``HTTP/2.0``)."""

    def __init__(self) -> None:
        super().__init__("unsupported HTTP version")


class BodyTimeout(TimeoutError):
    """The request's body did not arrive within ``body_timeout`` of its headers."""


def refusal(status: int, exc: BaseException | None, max_line_size: int) -> tuple[int, str]:
    """The status and drop reason for a request aiohttp's ``handle_error`` was given."""
    if isinstance(exc, LineTooLong):
        # args: (the line's start, the limit crossed, the size)
        return (414 if exc.args[1:2] == (max_line_size,) else 431), "too_large"
    if isinstance(exc, BadHttpMessage) and exc.message == TOO_MANY_HEADERS:
        return 431, "too_large"
    if status < 500 or isinstance(exc, UnsupportedVersion):
        return 400, "malformed"
    return 503, "internal_error"


def close_after_response(request: BaseRequest) -> None:
    """The request's body will not be read (broken, aborted or too slow): close the
    connection once the answer is written, without first reading what is left of the body
    (aiohttp's lingering read, which would re-raise the body's error and log it)."""
    protocol = request.protocol
    if isinstance(protocol, RefusingRequestHandler):
        protocol.skip_lingering()


class Http11Writer(StreamWriter):
    """aiohttp's writer, with ``HTTP/1.1`` in every status line: the version this server
    speaks, whatever the request said (RFC 9110 §6.2). A response to an HTTP/1.0 request
    that does not keep the connection says so, as HTTP/1.1 requires."""

    async def write_headers(self, status_line: str, headers: CIMultiDict[str]) -> None:
        version, _, status = status_line.partition(" ")
        if version != "HTTP/1.1":
            status_line = f"HTTP/1.1 {status}"
            headers.setdefault(hdrs.CONNECTION, "close")
        await super().write_headers(status_line, headers)


class RefusingRequestHandler(web.RequestHandler):
    """aiohttp's protocol, answering and recording refused requests without their data, and
    closing connections whose headers or body arrive too slowly.

    Reads aiohttp's own state (``_waiter``: the protocol waits for a request's headers;
    ``_messages``: requests parsed and not yet handled), as its keep-alive timer does."""

    __slots__ = (
        "_body",
        "_body_timeout",
        "_body_timer",
        "_header_timeout",
        "_header_timer",
        "_on_refused",
        "_started",
    )

    def __init__(
        self,
        manager: web.Server,
        *,
        on_refused: OnRefused | None,
        header_timeout: float = HEADER_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        **kwargs: Any,
    ):
        super().__init__(manager, **kwargs)
        self._on_refused = on_refused
        self._header_timeout = header_timeout
        self._body_timeout = body_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None  # a request's body, while it arrives
        self._started = False  # a byte of the awaited request has arrived

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # A connection is opened to send a request: the first one's headers are due from
        # the start (a browser's idle preconnection is closed silently, and reopened).
        self._header_timer = self._loop.call_later(self._header_timeout, self._headers_late)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._body_complete()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # The header clock runs from the connection's start until its first request's
        # headers, whatever aiohttp's task is doing yet.
        awaiting = self._awaiting_request() or self._header_timer is not None
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) > queued:
            # Headers complete (or refused): the header clock stops, a body's starts.
            self._started = False
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            if self._body is not None:
                self._body_broken(self._messages[queued][0])
            _, payload = self._messages[-1]
            if not payload.is_eof():
                self._body = payload
                self._body_timer = self._loop.call_later(self._body_timeout, self._body_late)
                payload.on_eof(self._body_complete)
        elif data and awaiting:
            self._started = True
            if self._header_timer is None:
                self._header_timer = self._loop.call_later(
                    self._header_timeout, self._headers_late)

    def skip_lingering(self) -> None:
        """Close after the response without reading the rest of the body (aiohttp's
        start() then closes the connection instead of lingering)."""
        self._lingering_time = 0.0

    def _awaiting_request(self) -> bool:
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._messages

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self._awaiting_request():
            return  # a request is being handled: its own timers apply
        if self._started:
            log.debug("request refused", extra={"status": 408, "reason": "timeout"})
            if self._on_refused is not None:
                self._on_refused("timeout")
            if self.transport is not None:
                self.transport.write(_TIMED_OUT)
        self.force_close()  # the transport sends what it holds, then closes

    def _body_late(self) -> None:
        body, self._body, self._body_timer = self._body, None, None
        if body is not None and body.exception() is None:
            body.set_exception(BodyTimeout())

    def _body_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
        self._body = self._body_timer = None

    def _body_broken(self, refused: object) -> None:
        """The parser refused what followed a body's start (llhttp: broken chunked framing)
        and queued the refusal behind the request still waiting for that body: the body's
        reader is told now, not when the client gives up, and the connection then closes."""
        body = self._body
        self._body_complete()
        error = getattr(refused, "exc", None)  # aiohttp's refusal (_ErrInfo) carries it
        if body is not None and body.exception() is None:
            body.set_exception(
                error if isinstance(error, BadHttpMessage) else BadHttpMessage("broken body"))
        self.skip_lingering()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,  # aiohttp's text: it quotes the request, never used
    ) -> web.StreamResponse:
        status, reason = refusal(status, exc, self.max_line_size)
        if status < 500:
            # Not aiohttp's record (it names the peer), and no exc_info: a parser's exception
            # quotes the request's bytes. Scanners send these all day: debug, and counted.
            log.debug("request refused", extra={"status": status, "reason": reason})
        else:
            # An error of our own that no handler caught (the JSON log writes its type only).
            log.error("request handler error", extra={"status": status, "reason": reason},
                      exc_info=exc)
        if request.writer.output_size > 0:
            # As aiohttp does: a response has begun, the connection can only be closed.
            raise ConnectionError("response already started")
        if self._on_refused is not None:
            self._on_refused(reason)
        response = web.Response(
            status=status,
            text=f"{status} {HTTPStatus(status).phrase}\n",
            headers={"Cache-Control": "no-store"},
        )
        response.force_close()
        return response


Handler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]
# Takes a request the application would route to one known handler, as that route would
# (the answer to await), or returns None: the application routes it.
FastRoute = Callable[[BaseRequest], Awaitable[web.StreamResponse] | None]


class RefusingServer(web.Server):
    """The application's ``web.Server`` as aiohttp built it, with the connections' protocol
    class replaced by ``RefusingRequestHandler``, requests of other HTTP versions refused,
    and ``Http11Writer`` writing every response."""

    def __init__(
        self,
        built: web.Server,
        on_refused: OnRefused | None,
        header_timeout: float = HEADER_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        fast_route: FastRoute | None = None,
    ) -> None:
        # ``_kwargs`` is what aiohttp gives every RequestHandler: handler_args, access log,
        # debug. Read once here, so that the one difference is the handler's class.
        super().__init__(
            _versions_checked(built.request_handler, fast_route),
            request_factory=built.request_factory,
            handler_cancellation=built.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **built._kwargs,
        )
        self._on_refused = on_refused
        self._timeouts = {"header_timeout": header_timeout, "body_timeout": body_timeout}
        factory = self.request_factory

        def http11_request(
            message: RawRequestMessage,
            payload: StreamReader,
            protocol: web.RequestHandler,
            writer: Any,
            task: asyncio.Task[None],
        ) -> BaseRequest:
            # The writer aiohttp made is unused as yet: replaced, with the same arguments.
            return factory(message, payload, protocol, Http11Writer(protocol, self._loop), task)

        self.request_factory = http11_request

    def __call__(self) -> RefusingRequestHandler:
        return RefusingRequestHandler(
            self, loop=self._loop, on_refused=self._on_refused, **self._timeouts, **self._kwargs
        )


def _versions_checked(handler: Handler, fast_route: FastRoute | None = None) -> Handler:
    async def checked(request: BaseRequest) -> web.StreamResponse:
        if request.version not in VERSIONS:
            # Raised where aiohttp's handle_error answers it: 400, counted as malformed.
            raise UnsupportedVersion()
        if fast_route is not None:
            answer = fast_route(request)
            if answer is not None:
                return await answer
        return await handler(request)

    return checked


class Runner(web.AppRunner):
    """``web.AppRunner`` whose server answers refused requests with
    ``RefusingRequestHandler``; ``on_refused`` counts them (None: not counted). Read
    timeouts in seconds; ``keepalive_timeout`` defaults to ``KEEPALIVE_TIMEOUT``."""

    __slots__ = ("_body_timeout", "_fast_route", "_header_timeout", "_on_refused")

    def __init__(
        self,
        app: web.Application,
        *,
        on_refused: OnRefused | None = None,
        header_timeout: float = HEADER_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        fast_route: FastRoute | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("keepalive_timeout", KEEPALIVE_TIMEOUT)
        super().__init__(app, **kwargs)
        self._on_refused = on_refused
        self._header_timeout = header_timeout
        self._body_timeout = body_timeout
        self._fast_route = fast_route

    async def _make_server(self) -> web.Server:
        return RefusingServer(
            await super()._make_server(), self._on_refused, self._header_timeout,
            self._body_timeout, self._fast_route,
        )
