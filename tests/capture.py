"""A real loopback HTTP server standing in for Google: records what arrives."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Hit:
    query: str
    body: str
    headers: dict[str, str]


@dataclass
class Capture:
    """``fail_with``: statuses to answer, in order, before answering 204."""

    hits: list[Hit] = field(default_factory=list)
    attempts: int = 0
    fail_with: list[int] = field(default_factory=list)
    gate: asyncio.Event | None = None  # when set, answers wait until the test opens it
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = (await request.read()).decode()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with:
            return web.Response(status=self.fail_with.pop(0))
        async with self.arrived:
            self.hits.append(Hit(request.rel_url.raw_query_string, body, dict(request.headers)))
            self.arrived.notify_all()
        return web.Response(status=204)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Hit]:
        """Wait until ``count`` hits arrived (a liveness bound, not a speed assertion)."""
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.hits) >= count), timeout)
        return self.hits

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/g/collect", self.handle)
        return app
