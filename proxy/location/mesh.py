"""Distinct pseudonymous visitors per location cell, for the ``mesh`` location mode
(privacy-requirements.md §4, CNIL condition 1): a cell may stand for a visitor only once at
least ``k`` distinct visitors were seen in it within the rolling window.

Members are pseudonyms (keyed hashes of client ids), never addresses. In memory each cell
keeps only its ``k`` most recently seen members, which is exactly enough to answer "at least
k within the window" and bounds memory. With Redis the counts are shared by replicas as one
HyperLogLog per cell and window slice; the beacon never waits on Redis: members are added in
batches and counts read back in the background, and until a shared count says a cell has
``k``, only this replica's own count can open it (stricter, so failing closed).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from proxy.state.periodic import flush_forever
from proxy.state.salts import KEY_PREFIX

log = logging.getLogger(__name__)

MAX_CELLS = 20_000  # cells tracked in memory; beyond, the least recently seen is forgotten
SLICES = 6  # the window is counted in this many slices (Redis); see RedisCellCounter
FLUSH_INTERVAL = 1.0
RECHECK_OPEN = 60.0  # seconds between shared re-counts of a cell that reached k


class CellCounter(Protocol):
    def observe(self, cells: Sequence[str], member: str) -> int:
        """Count ``member`` in every cell (finest first); the index of the finest cell with
        at least k distinct members in the window, or -1."""
        ...


class MemoryCellCounter:
    """Exact, per process: each cell's k most recent distinct members with when last seen."""

    def __init__(
        self,
        k: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
        max_cells: int = MAX_CELLS,
    ) -> None:
        self._k, self._window, self._clock, self._max = k, window, clock, max_cells
        # Plain dicts keep insertion order: a member seen again is moved to the end by
        # deleting and re-inserting it, so the first entry is always the least recent.
        self._cells: dict[str, dict[str, float]] = {}

    def add(self, cell: str, member: str, now: float) -> bool:
        """Record ``member``; whether ``cell`` now has k distinct members in the window."""
        cells = self._cells
        members = cells.pop(cell, None)
        if members is None:
            members = {}
            if len(cells) >= self._max:
                # Forget the least recently seen cell: forgetting only ever closes a cell.
                del cells[next(iter(cells))]
        elif member in members:
            del members[member]
        cells[cell] = members  # (re-)inserted last: the first cell is the least recent
        members[member] = now
        if len(members) > self._k:
            del members[next(iter(members))]
        # The k most recent distinct members: all within the window iff the oldest is.
        return len(members) == self._k and next(iter(members.values())) > now - self._window

    def observe(self, cells: Sequence[str], member: str) -> int:
        now = self._clock()
        found = -1
        for index in range(len(cells) - 1, -1, -1):  # coarse to fine: every cell counts
            if self.add(cells[index], member, now):
                found = index
        return found

    def __len__(self) -> int:
        return len(self._cells)


class RedisCellCounter:
    """Shared across replicas: PFADD per cell and window slice, PFCOUNT over the slices.

    The window is cut in ``SLICES`` slices; a cell's count is the union of the current slice
    and the ones before it that lie inside the window, so what is counted is never older
    than the window (it may cover a little less of it: stricter, never looser).
    """

    def __init__(
        self,
        client: Any,
        k: int,
        window: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client, self._k, self._window, self._clock = client, k, window, clock
        self._slice = window / SLICES
        self._local = MemoryCellCounter(k, window, clock)
        self._pending: dict[str, set[str]] = {}
        self._open: dict[str, float] = {}  # cell -> when a shared count last showed k
        self._checked: dict[str, float] = {}  # cell -> when last counted

    def observe(self, cells: Sequence[str], member: str) -> int:
        found = self._local.observe(cells, member)
        now = self._clock()
        for index, cell in enumerate(cells):  # finest first
            pending = self._pending.get(cell)
            if pending is None:
                pending = self._pending[cell] = set()
            if len(pending) < 10_000:
                pending.add(member)
            if found == -1 or index < found:
                opened = self._open.get(cell)
                if opened is not None and now - opened < RECHECK_OPEN + 2 * FLUSH_INTERVAL:
                    found = index
        return found

    def _keys(self, cell: str, now: float) -> list[str]:
        current = int(now // self._slice)
        # Whole slices inside the window, plus the current one.
        return [f"{KEY_PREFIX}mesh:{cell}:{n}" for n in range(current - SLICES + 1, current + 1)]

    async def flush(self) -> None:
        """Send pending members, then re-count the cells that need it (one pipeline each)."""
        now = self._clock()
        pending, self._pending = self._pending, {}
        slice_no = int(now // self._slice)
        ttl = math.ceil(self._window + self._slice)
        if pending:
            pipe = self._client.pipeline(transaction=False)
            for cell, members in pending.items():
                key = f"{KEY_PREFIX}mesh:{cell}:{slice_no}"
                pipe.pfadd(key, *members)
                pipe.expire(key, ttl)
            await pipe.execute()
        due = [
            cell
            for cell in pending
            if now - self._checked.get(cell, -math.inf)
            >= (RECHECK_OPEN if cell in self._open else FLUSH_INTERVAL)
        ]
        if due:
            pipe = self._client.pipeline(transaction=False)
            for cell in due:
                pipe.pfcount(*self._keys(cell, now))
            counts = await pipe.execute()
            for cell, count in zip(due, counts, strict=True):
                self._checked[cell] = now
                if int(count) >= self._k:
                    self._open[cell] = now
                else:
                    self._open.pop(cell, None)
        self._forget(now)

    def _forget(self, now: float) -> None:
        # Bounded like the local counter: drop bookkeeping for cells not seen for a window.
        if len(self._checked) > MAX_CELLS:
            for cell, when in list(self._checked.items()):
                if now - when > self._window or len(self._checked) > MAX_CELLS:
                    self._checked.pop(cell, None)
                    self._open.pop(cell, None)

    async def run(self) -> None:
        # Redis unreachable: shared counts age out of _open and the local count decides
        # alone (stricter). Members of a failed batch are not sent again.
        await flush_forever(self.flush, "mesh counts unavailable", FLUSH_INTERVAL)
