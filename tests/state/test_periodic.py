"""Background loops stop when their task is cancelled, even if the CancelledError is lost on
its way (Python 3.11's ``wait_for``, redis-py): the task still counts the request."""

from __future__ import annotations

import asyncio
import contextlib

from proxy.state.periodic import raise_if_cancelled


async def test_a_loop_that_lost_its_cancellation_stops_at_the_next_round() -> None:
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            raise_if_cancelled()
            rounds += 1
            # What a library that swallows the cancellation does:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.03)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done == {task} and task.cancelled()
    assert rounds >= 1


async def test_outside_a_cancelled_task_it_does_nothing() -> None:
    raise_if_cancelled()  # the test's own task is not being cancelled
