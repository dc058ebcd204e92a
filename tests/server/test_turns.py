"""Beacons run through the pipeline in turn: same outcomes, in arrival order, and no handler
left waiting when a handler is cancelled or the task running them is."""

from __future__ import annotations

import asyncio

import pytest

from proxy.config import from_mapping
from proxy.pipeline import IncomingRequest, Outcome, Pipeline
from proxy.server.turns import InTurn, PipelineStopped
from proxy.state.pseudonym import Pseudonymizer
from proxy.state.salts import MemoryState

TID = "G-TEST1234"
UA = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/125.0.0.0 Safari/537.36")


def beacon(n: int, consent: str = "granted") -> IncomingRequest:
    return IncomingRequest(query=f"v=2&tid={TID}&cid={n}.1&en=page_view&_p={n}",
                           cookie=f"analytics_consent={consent}", user_agent=UA)


class Recording(Pipeline):
    """The real pipeline, noting the order it saw beacons in; ``gate`` holds one back."""

    def __init__(self) -> None:
        config = from_mapping({"measurement_ids": [TID]}, env={})
        super().__init__(config, Pseudonymizer(MemoryState(), bits=32, rotation=86400))
        self.seen: list[str] = []
        self.gate: asyncio.Event | None = None

    async def process(self, request: IncomingRequest, *, trace: bool = False) -> Outcome:
        self.seen.append(request.query.rpartition("_p=")[2])
        if self.gate is not None:
            await self.gate.wait()
        return await super().process(request, trace=trace)


async def test_outcomes_are_the_pipelines_in_arrival_order() -> None:
    recording = Recording()
    turns = InTurn(recording)
    requests = [beacon(n, "granted" if n % 3 else "denied") for n in range(12)]
    outcomes = await asyncio.gather(*(turns.process(r) for r in requests))
    assert recording.seen == [str(n) for n in range(12)]
    for request, outcome in zip(requests, outcomes, strict=True):
        expected = await Pipeline.process(recording, request)  # the same, directly
        assert (outcome.forward, outcome.reason) == (expected.forward, expected.reason)
        assert outcome.outbound == expected.outbound
    assert [o.forward for o in outcomes] == [bool(n % 3) for n in range(12)]


async def test_a_cancelled_handler_does_not_stop_the_others() -> None:
    recording = Recording()
    recording.gate = asyncio.Event()
    turns = InTurn(recording)
    first = asyncio.create_task(turns.process(beacon(1)))
    second = asyncio.create_task(turns.process(beacon(2)))
    await asyncio.sleep(0.01)  # the first is in the pipeline, held at the gate
    first.cancel()
    recording.gate.set()
    assert (await second).forward
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (await turns.process(beacon(3))).forward  # and later beacons still run


async def test_waiting_handlers_fail_when_the_runner_is_cancelled() -> None:
    recording = Recording()
    recording.gate = asyncio.Event()  # never opened: the runner is stopped mid-beacon
    turns = InTurn(recording)
    waiting = [asyncio.create_task(turns.process(beacon(n))) for n in range(3)]
    await asyncio.sleep(0.01)
    runner = turns._runner
    assert runner is not None
    runner.cancel()
    results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 5)
    assert all(isinstance(r, PipelineStopped) for r in results), results
    recording.gate = None
    assert (await turns.process(beacon(4))).forward  # a new runner takes the next beacons
