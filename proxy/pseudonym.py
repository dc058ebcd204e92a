"""The rotating pseudonymous client id (privacy-requirements.md §3).

``pseudonym = HMAC-SHA256(salt_window, tid + "|" + cid)`` truncated to ``bits``, rendered
in GA's ``<number>.<number>`` shape. Salts change every window, so pseudonyms do too:
linkage across windows is broken on purpose.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

from proxy.state import SaltStore


@dataclass(frozen=True, slots=True)
class WindowKey:
    """The salt of one rotation window. Lives in memory only."""

    window: int
    start: int  # epoch seconds the window began
    end: int
    salt: bytes


class Pseudonymizer:
    """Computes pseudonyms; caches the current window's salt until its window ends."""

    def __init__(
        self, store: SaltStore, *, bits: int, rotation: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._bits = bits
        self._shift = 256 - bits
        self._rotation = rotation
        self._clock = clock
        self._key: WindowKey | None = None

    @property
    def bits(self) -> int:
        return self._bits

    async def current(self) -> WindowKey:
        """The key of the window containing now, from the local cache when still valid."""
        now = self._clock()
        key = self._key
        if key is not None and key.start <= now < key.end:
            return key
        window = int(now // self._rotation)
        start = window * self._rotation
        # The store forgets the salt shortly after the window ends.
        salt = await self._store.salt_for(window, ttl=start + self._rotation - now + 60)
        key = self._key = WindowKey(window, start, start + self._rotation, salt)
        return key

    def pseudonym(self, key: WindowKey, tid: str, cid: str) -> str:
        digest = hmac.new(key.salt, f"{tid}|{cid}".encode(), hashlib.sha256).digest()
        number = int.from_bytes(digest, "big") >> self._shift
        # GA's cid is "<random>.<first-seen seconds>"; the window start stands for first-seen.
        return f"{number}.{key.start}"
