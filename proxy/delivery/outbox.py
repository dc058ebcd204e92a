"""The outbox: where an accepted beacon waits when Google cannot take it now (the in-memory
queue is full, retries are exhausted, the process is shutting down), and from where it is
delivered later, by this replica or any other.

Only ``OutboundRequest`` is ever stored: query, body and User-Agent after sanitising, so
the outbox holds no personal data. Delivery is at least once: an entry is removed only
after Google answered, so a crash between Google's answer and the acknowledgement sends
that entry again.

Age limit: GA dates a hit by when it receives it, not by when the visitor acted. A beacon
delivered hours late lands in the wrong hour or day of the reports, and a session's late
events can start a new session. Entries older than ``max_age`` are therefore discarded and
counted as expired: a short outage is bridged, a long one costs data rather than
distorting reports. Raise the limit if completeness matters more than the timeline.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

from proxy.delivery.outbound import OutboundRequest
from proxy.observe.metrics import Metrics
from proxy.state.periodic import raise_if_cancelled

log = logging.getLogger(__name__)

Deliver = Callable[[OutboundRequest], Awaitable[bool]]
Entry = tuple[OutboundRequest, float]  # the request and when it was accepted (Unix time)

DEFAULT_MAX_AGE = 4 * 3600.0
DEFAULT_BATCH = 64  # entries read, and delivered concurrently, per round


class Spill(Protocol):
    """A bounded place for accepted requests, drained to Google by ``run``."""

    @property
    def durable(self) -> bool:
        """True when nothing held here would be lost if the process exited now."""
        ...

    @property
    def capacity(self) -> int: ...

    @property
    def shared(self) -> bool:
        """True when held in a store every worker and replica sees (Redis), not memory."""
        ...

    def has_room(self) -> bool:
        """Whether ``put`` could hold one more request now."""
        ...

    async def put(self, request: OutboundRequest, accepted_at: float) -> bool:
        """Hold ``request``; False only when it truly cannot (the caller counts the loss)."""
        ...

    async def put_many(self, entries: Sequence[Entry]) -> int:
        """Hold several at once; returns how many are held."""
        ...

    async def depth(self, *, include_shared: bool = True) -> int:
        """Entries held; without the shared store's when ``include_shared`` is False (one
        worker reports those for all)."""
        ...

    async def run(self, deliver: Deliver) -> None:
        """Deliver held entries until cancelled. ``deliver`` returns True when the request
        is settled (Google answered 2xx, or a final 4xx); False leaves it for a retry."""
        ...

    async def close(self) -> int:
        """Stop holding; returns how many entries are lost (not durable). Idempotent."""
        ...


class Backoff:
    """Exponential, capped, jittered waits between failing rounds, so a down Google is not
    hammered and replicas do not retry in step."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._initial, self._max = initial, maximum
        self._next = initial
        self.failing = False

    def reset(self) -> None:
        self._next, self.failing = self._initial, False

    async def wait(self) -> None:
        self.failing = True
        delay = self._next
        self._next = min(self._max, self._next * 2)
        await asyncio.sleep(random.uniform(delay / 2, delay))


async def settle(deliver: Deliver, request: OutboundRequest) -> bool:
    """Whether ``deliver`` settled ``request``; its exception is logged and means not."""
    try:
        return await deliver(request)
    except Exception:
        log.exception("outbox delivery error")
        return False


class MemorySpill:
    """A bounded deque: the outbox without Redis, and the fallback while Redis is down."""

    def __init__(
        self,
        maxlen: int,
        *,
        max_age: float = DEFAULT_MAX_AGE,
        metrics: Metrics | None = None,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        self._entries: deque[Entry] = deque()
        self._maxlen = maxlen
        self._max_age = max_age
        self._metrics = metrics or Metrics()
        self._backoff = (backoff_initial, backoff_max)
        self._batch = batch
        self._taken: dict[int, Entry] = {}  # being delivered by ``run``
        self._wake = asyncio.Event()

    @property
    def durable(self) -> bool:
        return len(self) == 0

    @property
    def capacity(self) -> int:
        return self._maxlen

    def __len__(self) -> int:
        return len(self._entries) + len(self._taken)

    def has_room(self) -> bool:
        return len(self) < self._maxlen

    def put_nowait(self, request: OutboundRequest, accepted_at: float) -> bool:
        if not self.has_room():
            return False
        self._entries.append((request, accepted_at))
        self._wake.set()
        return True

    async def put(self, request: OutboundRequest, accepted_at: float) -> bool:
        return self.put_nowait(request, accepted_at)

    async def put_many(self, entries: Sequence[Entry]) -> int:
        return sum(self.put_nowait(request, at) for request, at in entries)

    def take(self, count: int) -> list[Entry]:
        """Remove up to ``count`` of the oldest entries (to move them elsewhere)."""
        return [self._entries.popleft() for _ in range(min(count, len(self._entries)))]

    def give_back(self, entries: Iterable[Entry]) -> None:
        """Return taken entries to the front; they were counted in when first put."""
        self._entries.extendleft(reversed(list(entries)))
        if self._entries:
            self._wake.set()

    @property
    def shared(self) -> bool:
        return False

    async def depth(self, *, include_shared: bool = True) -> int:
        return len(self)

    async def run(self, deliver: Deliver) -> None:
        backoff = Backoff(*self._backoff)
        while True:
            raise_if_cancelled()
            if not self._entries:
                self._wake.clear()
                await self._wake.wait()
                continue
            # While Google fails, one entry probes; a full batch only once it answers.
            self._taken = dict(enumerate(self.take(1 if backoff.failing else self._batch)))
            try:
                await asyncio.gather(
                    *(self._one(deliver, i, e) for i, e in list(self._taken.items()))
                )
            finally:
                # Whatever is not settled (a failure, or cancellation mid-send) goes back.
                failed = list(self._taken.values())
                self._taken = {}
                self.give_back(failed)
            if failed:
                await backoff.wait()
            else:
                backoff.reset()

    async def _one(self, deliver: Deliver, index: int, entry: Entry) -> None:
        request, accepted_at = entry
        if time.time() - accepted_at > self._max_age:
            self._metrics.expired.inc()
        elif await settle(deliver, request):
            self._metrics.outbox_delivered.inc()
        else:
            return
        del self._taken[index]

    async def close(self) -> int:
        lost = len(self)
        self._entries.clear()
        self._taken = {}
        return lost
