"""Who sent the beacon: the socket peer, or the right-most untrusted X-Forwarded-For entry
when the peer is a configured trusted proxy (privacy-requirements.md §4).

The address lives in memory for the length of one request and is never stored or logged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ClientAddressResolver:
    """Compiled once from ``trusted_proxies``."""

    def __init__(self, trusted: Iterable[str]) -> None:
        self._trusted = tuple(ipaddress.ip_network(n, strict=False) for n in trusted)

    def _is_trusted(self, address: IPAddress) -> bool:
        return any(address in net for net in self._trusted)

    def resolve(self, peer: str | None, forwarded_for: str | None) -> IPAddress | None:
        """The client's address, or None when nothing parseable is known."""
        address = parse_address(peer)
        if address is None or not forwarded_for or not self._is_trusted(address):
            return address
        # Walk from the right: each hop we trust vouches for the one before it.
        for hop in reversed(forwarded_for.split(",")):
            candidate = parse_address(hop.strip())
            if candidate is None:
                return None
            if not self._is_trusted(candidate):
                return candidate
            address = candidate
        return address


def parse_address(text: str | None) -> IPAddress | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def truncate(address: IPAddress, ipv4_prefix: int = 24, ipv6_prefix: int = 48) -> str:
    """The network part only: ``203.0.113.57`` -> ``203.0.113.0``."""
    if address.version == 4:
        if ipv4_prefix == 24:  # the default, per beacon: string work beats building an address
            text = str(address)
            return text[: text.rfind(".")] + ".0"
        mask = (0xFFFFFFFF << (32 - ipv4_prefix)) & 0xFFFFFFFF
        return str(ipaddress.IPv4Address(int(address) & mask))
    mask6 = ((1 << 128) - 1) ^ ((1 << (128 - ipv6_prefix)) - 1)
    return str(ipaddress.IPv6Address(int(address) & mask6))
