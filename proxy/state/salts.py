"""Shared state behind a narrow interface. The in-memory store is real, not a mock: it is
the embedded default for a single process. The Redis store (multi-replica, see
``proxy.state.redis``) implements the same protocol."""

from __future__ import annotations

import secrets
from typing import Protocol

SALT_BYTES = 32
# Every Redis key of the proxy: one hash tag, so one slot, so Redis Cluster works.
KEY_PREFIX = "{analytics_proxy}:"


class SaltStore(Protocol):
    """One random salt per rotation window, the same for every replica sharing the store."""

    source: str  # "memory" or "redis": reported in metrics as the salt's source

    async def salt_for(self, window: int, ttl: float) -> bytes:
        """The salt of ``window``, created on first use, forgotten after ``ttl`` seconds."""
        ...

    async def ping(self) -> bool:
        """Whether the store answers now. Never raises."""
        ...

    async def close(self) -> None: ...


class MemoryState:
    """Process-local state. Keeps only the current window's salt: nothing keeps old salts."""

    source = "memory"

    def __init__(self) -> None:
        self._salts: dict[int, bytes] = {}

    async def salt_for(self, window: int, ttl: float) -> bytes:
        salt = self._salts.get(window)
        if salt is None:
            # Older windows are gone the moment a newer one is needed.
            for old in [w for w in self._salts if w < window]:
                del self._salts[old]
            salt = self._salts[window] = secrets.token_bytes(SALT_BYTES)
        return salt

    def windows(self) -> list[int]:
        """Windows whose salt is held (tests prove expired salts are gone)."""
        return sorted(self._salts)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._salts.clear()
