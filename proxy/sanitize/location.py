"""Location modes: what, if anything, stands for the visitor's place on the outbound hit
(privacy-requirements.md §4). The value is sent as ``_uip``."""

from __future__ import annotations

from collections.abc import Callable

from proxy.client import IPAddress, truncate
from proxy.config import Location

LocationMode = Callable[[IPAddress | None], "str | None"]


def omit(config: Location) -> LocationMode:
    """Nothing: Google then places every visitor at the proxy (document it to site owners)."""
    return lambda address: None


def truncated(config: Location) -> LocationMode:
    """The address with the host part zeroed (IPv4 /24, IPv6 /48 by default)."""
    v4, v6 = config.ipv4_prefix, config.ipv6_prefix

    def mode(address: IPAddress | None) -> str | None:
        return None if address is None else truncate(address, v4, v6)

    return mode


MODES: dict[str, Callable[[Location], LocationMode]] = {"omit": omit, "truncated": truncated}


def compile_location(config: Location) -> LocationMode:
    try:
        return MODES[config.mode](config)
    except KeyError:
        raise ValueError(f"privacy.location.mode: {config.mode!r} needs the geo module") from None
