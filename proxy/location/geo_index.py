"""Representative addresses: one fixed address per country, region and city, taken from the
geo database's own networks (privacy-requirements.md §4, location modes ``country`` and
``mesh``). Every visitor of a cell is sent the same address, so only the cell leaves.

The choice is deterministic, from the database alone. For each cell, among the networks whose
record places them in it (anonymous proxies, satellite and anycast networks excluded):
IPv4 before IPv6 (Google geolocates IPv4 best); then networks whose record is no finer than
the cell (for a country, a record with no region and no city, so Google is not handed a city
the cell does not have); then the largest network; then the lowest address. The network's
first address stands for it.

Finding them means visiting every network. maxminddb decodes each network's record, about
20 µs each (a minute for GeoLite2 City); this module walks the search tree itself and decodes
each distinct record once, about 15 s for GeoLite2 City. That is still start-up work no
beacon may wait for: the server builds the index in a separate process, caches it on disk
under the database's digest (one build per database version, shared by workers through a
file lock), and sends no location until it is ready.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import ipaddress
import json
import logging
import multiprocessing
import os
import tempfile
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import maxminddb

log = logging.getLogger(__name__)

FORMAT = 1
# Cell keys: "country:GB", "region:GB-ENG", "city:2643743" (a GeoNames id).
Index = dict[str, str]

_IPV4 = 0
_IPV6 = 1


def cell_keys(country: str | None, region: str | None, city: int | None) -> tuple[str, ...]:
    """The cells a place is in, finest first: city, region, country (those known)."""
    if not country:
        return ()
    keys = [f"country:{country}"]
    if region:
        keys.insert(0, f"region:{country}-{region}")
    if city is not None:
        keys.insert(0, f"city:{city}")
    return tuple(keys)


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "analytics-proxy-geo"


def digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()[:32]


def _walk(
    buf: bytes, node_count: int, record_size: int, ip_version: int
) -> dict[int, tuple[int, int, int]]:
    """Every data record reachable in the tree -> its best network (family, prefix, base)."""
    node_bytes = record_size * 2 // 8
    frm = int.from_bytes

    def children(node: int) -> tuple[int, int]:
        o = node * node_bytes
        if record_size == 24:
            return frm(buf[o : o + 3], "big"), frm(buf[o + 3 : o + 6], "big")
        if record_size == 28:
            mid = buf[o + 3]
            return (
                ((mid & 0xF0) << 20) | frm(buf[o : o + 3], "big"),
                ((mid & 0x0F) << 24) | frm(buf[o + 4 : o + 7], "big"),
            )
        return frm(buf[o : o + 4], "big"), frm(buf[o + 4 : o + 8], "big")

    # In an IPv6 tree IPv4 lives under ::/96; other paths (::ffff:0:0/96, 2002::/16, ...)
    # alias the same subtree and are skipped so each network is visited once.
    v4_start, v4_depth = 0, 0
    if ip_version == 6:
        v4_depth = 96
        for _ in range(96):
            if v4_start >= node_count:
                break
            v4_start = children(v4_start)[0]
    best: dict[int, tuple[int, int, int]] = {}
    stack: list[tuple[int, int, int]] = [(0, 0, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth, acc = pop()
        if ip_version == 6 and node == v4_start and (depth != v4_depth or acc != 0):
            continue
        left, right = children(node)
        depth += 1
        # Right first, so the left (lower) half is visited first: lowest address wins ties.
        for child, bits in ((right, (acc << 1) | 1), (left, acc << 1)):
            if child < node_count:
                push((child, depth, bits))
            elif child > node_count:
                if ip_version == 6 and depth > 96 and bits >> (depth - 96) == 0:
                    family, prefix, base = _IPV4, depth - 96, bits << (128 - depth)
                elif ip_version == 6:
                    family, prefix, base = _IPV6, depth, bits << (128 - depth)
                else:
                    family, prefix, base = _IPV4, depth, bits << (32 - depth)
                current = best.get(child)
                if current is None or (family, prefix) < current[:2]:
                    best[child] = (family, prefix, base)
    return best


def _place_of(record: Any) -> tuple[str, str | None, int | None] | None:
    if not isinstance(record, dict):
        return None
    traits = record.get("traits") or {}
    if traits.get("is_anonymous_proxy") or traits.get("is_satellite_provider"):
        return None
    if traits.get("is_anycast"):
        return None
    country = (record.get("country") or {}).get("iso_code")
    if not country:
        return None
    subdivisions = record.get("subdivisions") or ()
    region = subdivisions[0].get("iso_code") if subdivisions else None
    city = (record.get("city") or {}).get("geoname_id")
    return country, region, city if isinstance(city, int) else None


def build_index(path: str | os.PathLike[str]) -> Index:
    """The representative address of every cell of the database at ``path``."""
    buf = Path(path).read_bytes()
    try:
        reader = maxminddb.open_database(str(path), maxminddb.MODE_MMAP_EXT)
    except ValueError:  # no C extension on this platform
        reader = maxminddb.open_database(str(path), maxminddb.MODE_MMAP)
    with reader:
        meta = reader.metadata()
        best = _walk(buf, meta.node_count, meta.record_size, meta.ip_version)
        chosen: dict[str, tuple[tuple[int, int, int, int], int, int]] = {}
        for family, prefix, base in best.values():
            if family == _IPV4:
                address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(
                    base & 0xFFFFFFFF if meta.ip_version == 6 else base
                )
            else:
                address = ipaddress.IPv6Address(base)
            place = _place_of(reader.get(address))
            if place is None:
                continue
            country, region, city = place
            for key in cell_keys(country, region, city):
                level = key.partition(":")[0]
                # How much finer than the cell the record is: a coarser record is preferred.
                if level == "country":
                    excess = (region is not None) + (city is not None)
                else:
                    excess = int(level == "region" and city is not None)
                score = (family, excess, prefix, int(address))
                current = chosen.get(key)
                if current is None or score < current[0]:
                    chosen[key] = (score, family, int(address))
    return {
        key: str(ipaddress.IPv4Address(a) if fam == _IPV4 else ipaddress.IPv6Address(a))
        for key, (_, fam, a) in sorted(chosen.items())
    }


def load_or_build(path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None) -> Index:
    """The cached index for this database file, built (once, under a lock) if missing."""
    source = Path(path)
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = digest(source)
    target = directory / f"representatives-{key}.json"
    with (directory / f"representatives-{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other workers wait here, then read the cache
        cached = _read(target, key)
        if cached is not None:
            return cached
        index = build_index(source)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"format": FORMAT, "digest": key, "cells": index}))
        tmp.replace(target)
        return index


def _read(target: Path, key: str) -> Index | None:
    try:
        data = json.loads(target.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("digest") != key:
        return None
    cells = data.get("cells")
    if not isinstance(cells, dict):
        return None
    return {str(k): str(v) for k, v in cells.items()}


class Representatives:
    """The index in use; ``get`` is the per-beacon call (a dict lookup, ``None`` until the
    index is ready). Rebuilt in a separate process when the database is replaced."""

    def __init__(self, index: Mapping[str, str] | None = None) -> None:
        self._index: Mapping[str, str] = index or {}
        self.ready = index is not None

    def get(self, key: str) -> str | None:
        return self._index.get(key)

    def __len__(self) -> int:
        return len(self._index)

    def install(self, index: Mapping[str, str]) -> None:
        self._index = index
        self.ready = True

    async def build(self, path: str, cache_dir: str | None) -> None:
        """Load or build in a child process; keep the previous index on failure."""
        loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")
        try:
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                index = await loop.run_in_executor(pool, load_or_build, path, cache_dir)
        except Exception as exc:
            log.error("geo index build failed", extra={"reason": type(exc).__name__})
            return
        self.install(index)
        log.info("geo index ready", extra={"count": len(index)})
