"""The HTTP layer under the applications: request-line and header limits, and the answer to a
request aiohttp refuses before any handler runs.

aiohttp answers such a request itself (always 400) and logs ``Error handling request from
<peer address>``, with an exception whose text quotes the request's bytes. Here one method is
replaced, ``RequestHandler.handle_error``: an over-long request line is answered 414, too many
or too long header lines 431, anything else unparseable 400, and an error no handler caught
503, never 500. The answer is a bare status line; the record names no address and, for a
refused request, carries no exception (the parser's text quotes the request); the public
application counts the refusal as a dropped beacon. ``Runner`` (an ``AppRunner``) is what puts
that handler class in place: aiohttp offers no other way to choose it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_request import BaseRequest

from proxy.beacon import MAX_QUERY
from proxy.cookies import MAX_COOKIE_HEADER

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

# Told the drop reason of every refused request: too_large, malformed or internal_error.
OnRefused = Callable[[str], None]


def refusal(status: int, exc: BaseException | None, max_line_size: int) -> tuple[int, str]:
    """The status and drop reason for a request aiohttp's ``handle_error`` was given."""
    if isinstance(exc, LineTooLong):
        # args: (the line's start, the limit crossed, the size)
        return (414 if exc.args[1:2] == (max_line_size,) else 431), "too_large"
    if isinstance(exc, BadHttpMessage) and exc.message == TOO_MANY_HEADERS:
        return 431, "too_large"
    if status < 500:
        return 400, "malformed"
    return 503, "internal_error"


class RefusingRequestHandler(web.RequestHandler):
    """aiohttp's protocol, answering and recording refused requests without their data."""

    __slots__ = ("_on_refused",)

    def __init__(self, manager: web.Server, *, on_refused: OnRefused | None, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self._on_refused = on_refused

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


class RefusingServer(web.Server):
    """The application's ``web.Server`` as aiohttp built it, with the connections' protocol
    class replaced by ``RefusingRequestHandler``."""

    def __init__(self, built: web.Server, on_refused: OnRefused | None) -> None:
        # ``_kwargs`` is what aiohttp gives every RequestHandler: handler_args, access log,
        # debug. Read once here, so that the one difference is the handler's class.
        super().__init__(
            built.request_handler,
            request_factory=built.request_factory,
            handler_cancellation=built.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **built._kwargs,
        )
        self._on_refused = on_refused

    def __call__(self) -> RefusingRequestHandler:
        return RefusingRequestHandler(
            self, loop=self._loop, on_refused=self._on_refused, **self._kwargs
        )


class Runner(web.AppRunner):
    """``web.AppRunner`` whose server answers refused requests with
    ``RefusingRequestHandler``; ``on_refused`` counts them (None: not counted)."""

    __slots__ = ("_on_refused",)

    def __init__(
        self, app: web.Application, *, on_refused: OnRefused | None = None, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self._on_refused = on_refused

    async def _make_server(self) -> web.Server:
        return RefusingServer(await super()._make_server(), self._on_refused)
