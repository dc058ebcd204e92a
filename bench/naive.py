"""The baseline: a naive aiohttp pass-through proxy that does no privacy work. It forwards
each beacon as it is (query, body, User-Agent) over one keep-alive session and answers once
the upstream has answered."""

from __future__ import annotations

import sys

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)


async def collect(request: web.Request) -> web.Response:
    body = await request.read()
    url = f"{request.app['upstream']}?{request.rel_url.raw_query_string}"
    async with request.app[SESSION].post(
        url, data=body, headers={"User-Agent": request.headers.get("User-Agent", "")}
    ) as resp:
        await resp.read()
    return web.Response(status=204)


async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
    yield
    await app[SESSION].close()


def main() -> None:
    port, upstream = int(sys.argv[1]), sys.argv[2]
    app = web.Application()
    app["upstream"] = upstream
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/g/collect", collect)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
