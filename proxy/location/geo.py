"""The visitor's place, looked up at the proxy in a MaxMind DB (GeoLite2/GeoIP2 Country or
City, or any MMDB with the same record shape). The address never leaves the proxy; only the
place (country, first-level subdivision, city) goes on, to choose the consent regime and
the location cell (proxy/location/geo_index.py).

Opened with the C extension (``MODE_MMAP_EXT``) when it is available; reloaded without a
restart when the file is replaced, as geoipupdate does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import maxminddb
from maxminddb.errors import InvalidDatabaseError

from proxy.config import ConfigError
from proxy.ingest.client import IPAddress

log = logging.getLogger(__name__)

RELOAD_CHECK = 60.0  # seconds between looks at the file for a replacement
CACHE_SIZE = 65_536  # networks whose place is remembered (a few MiB)
CACHE_V4_PREFIX = 24
CACHE_V6_PREFIX = 48


@dataclass(frozen=True, slots=True)
class Place:
    """What the proxy knows of where a visitor is. ``None``: not known."""

    country: str | None = None  # ISO 3166-1 alpha-2
    region: str | None = None  # first-level subdivision code within the country, e.g. "CA"
    city: int | None = None  # GeoNames id, with a City database (location mode mesh)


UNKNOWN = Place()


def _network_key(address: IPAddress) -> int:
    # IPv4 /24 and IPv6 /48 as integers; the version bit keeps the two spaces apart.
    if address.version == 4:
        return int(address) >> 8
    return (int(address) >> 80) | (1 << 48)


def _place(record: Any) -> Place:
    if not isinstance(record, dict):
        return UNKNOWN
    traits = record.get("traits") or {}
    if traits.get("is_anonymous_proxy"):
        return UNKNOWN  # its location is the proxy's, not the visitor's
    # The country the address is in, not the one its block is registered to.
    country = (record.get("country") or {}).get("iso_code")
    subdivisions = record.get("subdivisions") or ()
    region = subdivisions[0].get("iso_code") if subdivisions else None
    city = (record.get("city") or {}).get("geoname_id")
    return Place(country, region, city if isinstance(city, int) else None)


class GeoDatabase:
    """One open database; ``lookup`` is the per-beacon call and never raises."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._reader, self._stamp, self.mode = self._open()
        self._places: dict[int, Place] = {}
        log.info("geo database open", extra={"mode": self.mode})

    def _open(self) -> tuple[Any, tuple[int, int, int], str]:
        try:
            stat = self._path.stat()
            try:
                reader = maxminddb.open_database(str(self._path), maxminddb.MODE_MMAP_EXT)
                mode = "MODE_MMAP_EXT"
            except ValueError:  # the C extension is not available on this platform
                reader = maxminddb.open_database(str(self._path), maxminddb.MODE_MMAP)
                mode = "MODE_MMAP"
        except (OSError, InvalidDatabaseError) as exc:
            reason = "not a MaxMind DB"
            if isinstance(exc, OSError) and exc.strerror:
                reason = exc.strerror
            raise ConfigError(f"geo.database: cannot open {self._path}: {reason}") from None
        return reader, (stat.st_ino, stat.st_mtime_ns, stat.st_size), mode

    @property
    def built_at(self) -> float:
        """When the database was built (epoch seconds), for the staleness metric."""
        return float(self._reader.metadata().build_epoch)

    def lookup(self, address: IPAddress | None) -> Place:
        if address is None:
            return UNKNOWN
        network = _network_key(address)
        place = self._places.get(network)
        if place is not None:
            return place
        try:
            record, prefix = self._reader.get_with_prefix_len(address)
        except ValueError:  # e.g. an IPv6 address in an IPv4-only database
            return UNKNOWN
        place = _place(record)
        # Decoding a City record costs ~20 µs: remember the small result per network, but
        # only when the database's own network is no finer than the key's, so a block that
        # the database splits is never merged. Memory only, bounded, dropped on reload.
        if prefix <= (CACHE_V4_PREFIX if address.version == 4 else CACHE_V6_PREFIX):
            if len(self._places) >= CACHE_SIZE:
                self._places.pop(next(iter(self._places)))
            self._places[network] = place
        return place

    def reload_if_replaced(self) -> bool:
        """Open the file again if it was replaced; keep serving the old one if that fails."""
        try:
            stat = self._path.stat()
        except OSError:
            return False  # mid-replacement or gone: keep what we have
        if (stat.st_ino, stat.st_mtime_ns, stat.st_size) == self._stamp:
            return False
        try:
            reader, stamp, mode = self._open()
        except ConfigError:
            log.warning("geo database replaced by an unreadable file; keeping the old one")
            return False
        old, self._reader, self._stamp, self.mode = self._reader, reader, stamp, mode
        self._places = {}
        old.close()
        log.info("geo database reloaded", extra={"mode": mode})
        return True

    async def watch(
        self,
        interval: float = RELOAD_CHECK,
        on_reload: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        while True:
            await asyncio.sleep(interval)
            if self.reload_if_replaced() and on_reload is not None:
                await on_reload()

    @property
    def path(self) -> str:
        return str(self._path)

    def age(self) -> float:
        return max(0.0, time.time() - self.built_at)

    def close(self) -> None:
        self._reader.close()
