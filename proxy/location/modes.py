"""Location modes: what, if anything, stands for the visitor's place on the outbound hit
(privacy-requirements.md §4). The value is sent as ``_uip``; the level says how fine it is,
for metrics and the audit trail (never which cell).

- ``omit``: nothing; Google then places every visitor at the proxy.
- ``truncated``: the address with the host part zeroed (IPv4 /24, IPv6 /48 by default).
- ``country``: the representative address of the visitor's country (proxy/location/geo_index.py).
- ``mesh``: the representative address of the finest of city, region, country whose cell saw
  at least k distinct pseudonymous visitors in the rolling window (proxy/location/mesh.py); nothing
  below k even for the country.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.config import Location
from proxy.ingest.client import IPAddress, truncate
from proxy.location.geo import Place
from proxy.location.geo_index import Representatives, cell_keys
from proxy.location.mesh import CellCounter

LEVELS = ("city", "region", "country", "truncated", "omitted")
OMITTED = (None, "omitted")

# (address, place, member) -> (value for _uip or None, level). ``member`` is the visitor's
# pseudonym, read by mesh only.
LocationMode = Callable[[IPAddress | None, Place, str], tuple[str | None, str]]


def omit(config: Location) -> LocationMode:
    return lambda address, place, member: OMITTED


def truncated(config: Location) -> LocationMode:
    v4, v6 = config.ipv4_prefix, config.ipv6_prefix

    def mode(address: IPAddress | None, place: Place, member: str) -> tuple[str | None, str]:
        return OMITTED if address is None else (truncate(address, v4, v6), "truncated")

    return mode


def country(representatives: Representatives) -> LocationMode:
    get = representatives.get

    def mode(address: IPAddress | None, place: Place, member: str) -> tuple[str | None, str]:
        value = get(f"country:{place.country}") if place.country else None
        return OMITTED if value is None else (value, "country")

    return mode


def mesh(representatives: Representatives, counter: CellCounter) -> LocationMode:
    get = representatives.get

    def mode(address: IPAddress | None, place: Place, member: str) -> tuple[str | None, str]:
        cells = cell_keys(place.country, place.region, place.city)
        if not cells:
            return OMITTED
        found = counter.observe(cells, member)
        # A cell without a representative (index not ready) falls to the next coarser one.
        for cell in cells[found:] if found >= 0 else ():
            value = get(cell)
            if value is not None:
                return value, cell.partition(":")[0]
        return OMITTED

    return mode


def compile_location(
    config: Location,
    representatives: Representatives | None = None,
    counter: CellCounter | None = None,
) -> LocationMode:
    if config.mode == "omit":
        return omit(config)
    if config.mode == "truncated":
        return truncated(config)
    if representatives is None:
        raise ValueError(f"privacy.location.mode: {config.mode!r} needs geo.database")
    if config.mode == "country":
        return country(representatives)
    if counter is None:
        raise ValueError("privacy.location.mode: 'mesh' needs a visitor counter")
    return mesh(representatives, counter)
