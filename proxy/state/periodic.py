"""Background flushes to Redis: once a second, backing off while Redis is unreachable."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


def raise_if_cancelled() -> None:
    """Stop a background loop whose task was asked to stop, even if the CancelledError got lost
    on its way: Python 3.11's ``asyncio.wait_for`` drops it when its awaitable finishes at the
    same moment, and a redis-py command cancelled at the wrong moment can return normally.
    The task still counts the request (``Task.cancelling``), so a loop that checks here on
    every round ends within one round instead of running on, and blocking shutdown, forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def flush_forever(
    flush: Callable[[], Awaitable[None]],
    failure: str,
    interval: float = 1.0,
    longest: float = 30.0,
) -> None:
    """Call ``flush`` every ``interval`` seconds; on an error log ``failure`` (with the
    exception's type only: its text may quote data) and wait twice as long, up to ``longest``."""
    delay = interval
    while True:
        raise_if_cancelled()
        await asyncio.sleep(delay)
        try:
            await flush()
            delay = interval
        except Exception as exc:
            log.warning(failure, extra={"reason": type(exc).__name__})
            delay = min(delay * 2, longest)
