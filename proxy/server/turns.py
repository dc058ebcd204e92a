"""The beacons that arrive together go through the pipeline back to back, in one task.

Each request handler used to run the pipeline itself, interleaved with aiohttp's code for the
other requests of the same turn of the event loop. Run back to back, the pipeline's code and
tables stay in the CPU's caches: the pipeline costs about 86 µs per beacon in a tight loop
and about 145 µs interleaved. Measured with two proxies sharing one core under the same load
(so that the machine's drift cancels out), the process running beacons in turn served 1.10 to
1.14 times as many per second as the one without (three runs of 8 s). The work per beacon and
the order are unchanged, and the answer still never waits for Google.
"""

from __future__ import annotations

import asyncio

from proxy.pipeline import IncomingRequest, Outcome, Pipeline


class PipelineStopped(RuntimeError):
    """The task running beacons in turn was cancelled (shutdown) before this one's turn."""


class InTurn:
    """``process`` as ``Pipeline.process``, queued behind the beacons already waiting."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._waiting: list[tuple[IncomingRequest, bool, asyncio.Future[Outcome]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def process(self, request: IncomingRequest, *, trace: bool = False) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, trace, future))
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="pipeline-in-turn")
        return await future

    async def _run(self) -> None:
        batch: list[tuple[IncomingRequest, bool, asyncio.Future[Outcome]]] = []
        done = 0
        try:
            while self._waiting:
                batch, self._waiting, done = self._waiting, [], 0
                for request, trace, future in batch:
                    # Pipeline.process never raises: every fault is a counted drop.
                    outcome = await self._pipeline.process(request, trace=trace)
                    done += 1
                    if not future.done():  # its handler may have been cancelled meanwhile
                        future.set_result(outcome)
        finally:
            # Only when cancelled: nothing that waits may wait forever. Its handler answers
            # with a counted 503; nothing of it was forwarded.
            for _, _, future in (*batch[done:], *self._waiting):
                if not future.done():
                    future.set_exception(PipelineStopped("pipeline stopped"))
            self._waiting = []
            self._runner = None
