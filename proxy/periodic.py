"""Background flushes to Redis: once a second, backing off while Redis is unreachable."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


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
        await asyncio.sleep(delay)
        try:
            await flush()
            delay = interval
        except Exception as exc:
            log.warning(failure, extra={"reason": type(exc).__name__})
            delay = min(delay * 2, longest)
