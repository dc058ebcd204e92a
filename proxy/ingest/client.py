"""Who sent the beacon: the socket peer, or, when the peer is a configured trusted proxy, the
right-most untrusted address of the forwarding chain (privacy-requirements.md §4).

The chain is read from one header, the one the trusted proxies write (``forwarded_header``):
``X-Forwarded-For`` (the default) or RFC 7239 ``Forwarded``; the other is ignored, since a
client can send either and only the one the proxies append to can be believed. Every line
of that header counts, in order, as one comma-separated list (RFC 9110 §5.3): a proxy such as
HAProxy's ``option forwardfor`` adds a line of its own after the client's. The chain is walked
from the right: each trusted hop vouches for the one before it; the first untrusted address
is the client. A hop that cannot be read (``unknown``, an obfuscated identifier, anything
that is not an address, a ``Forwarded`` element without ``for=``) ends the walk: the client's
address is then unknown (None), never an address further left, which the client may have
written itself.

The address lives in memory for the length of one request and is never stored or logged.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from typing import Literal, Protocol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ForwardedHeader = Literal["x-forwarded-for", "forwarded"]
HEADER_NAMES: dict[str, str] = {"x-forwarded-for": "X-Forwarded-For", "forwarded": "Forwarded"}
MAX_HOPS = 64  # trusted hops walked at most; a longer chain of trusted hops is unknown
TRUSTED_PEERS_KEPT = 256  # trusted peers' parsed addresses remembered (proxies, not clients)


class HeaderLines(Protocol):
    """Every line of a header, in order (``CIMultiDictProxy`` has it)."""

    def getall(self, key: str, default: Sequence[str]) -> Sequence[str]: ...


class ClientAddressResolver:
    """Compiled once from ``trusted_proxies`` and ``forwarded_header``."""

    def __init__(self, trusted: Iterable[str], header: ForwardedHeader = "x-forwarded-for") -> None:
        self._trusted = tuple(ipaddress.ip_network(n, strict=False) for n in trusted)
        self._header = HEADER_NAMES[header]
        self._hops = forwarded_hops if header == "forwarded" else forwarded_for_hops
        self._trusted_peers: dict[str, IPAddress] = {}

    @property
    def header(self) -> str:
        """The name of the header the chain is read from."""
        return self._header

    def _is_trusted(self, address: IPAddress) -> bool:
        return any(address in net for net in self._trusted)

    def resolve(self, peer: str | None, headers: HeaderLines | None = None) -> IPAddress | None:
        """The client's address, or None when it cannot be known."""
        # The peers found trusted (the site's own proxies, never a client) are remembered.
        address = self._trusted_peers.get(peer) if peer else None
        if address is None:
            address = parse_address(peer)
            if address is None or headers is None or not self._is_trusted(address):
                return address
            if len(self._trusted_peers) < TRUSTED_PEERS_KEPT:
                self._trusted_peers[peer] = address  # type: ignore[index]
        elif headers is None:
            return address
        lines = headers.getall(self._header, ())
        if not lines:
            return address  # the trusted proxy itself (a health check, a local test)
        hops = self._hops(lines)
        # Walk from the right: each hop we trust vouches for the one before it.
        for walked, hop in enumerate(reversed(hops)):
            if walked == MAX_HOPS:
                return None
            candidate = parse_hop(hop)
            if candidate is None:
                return None
            if not self._is_trusted(candidate):
                return candidate
            address = candidate
        return address  # every hop trusted: the left-most is the client (an internal one)


def forwarded_for_hops(lines: Sequence[str]) -> list[str | None]:
    """The entries of every ``X-Forwarded-For`` line, in order."""
    return list(",".join(lines).split(","))


def forwarded_hops(lines: Sequence[str]) -> list[str | None]:
    """The ``for=`` node of each element of every ``Forwarded`` line, in order (quotes
    removed); None for an element that cannot be read or has no single ``for=``."""
    hops: list[str | None] = []
    for element in _split_quoted(",".join(lines), ","):
        found: list[str] = []
        valid = True
        for pair in _split_quoted(element, ";"):
            name, sep, value = pair.strip().partition("=")
            if not pair.strip():
                continue
            if not sep or not name.strip() or name != name.strip():
                valid = False
                break
            if name.lower() == "for":
                unquoted = _unquote(value)
                if unquoted is None:
                    valid = False
                    break
                found.append(unquoted)
        hops.append(found[0] if valid and len(found) == 1 else None)
    return hops


def _split_quoted(text: str, separator: str) -> list[str]:
    """``text`` split on ``separator`` outside quoted strings (backslash escapes inside)."""
    parts: list[str] = []
    start, quoted, escaped = 0, False, False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _unquote(value: str) -> str | None:
    """A token as it is, a quoted string without its quotes and escapes; None if broken."""
    if not value.startswith('"'):
        return None if '"' in value or "\\" in value else value
    if len(value) < 2 or not value.endswith('"'):
        return None
    inner = value[1:-1]
    out: list[str] = []
    escaped = False
    for char in inner:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            return None
        else:
            out.append(char)
    return None if escaped else "".join(out)


def parse_hop(hop: str | None) -> IPAddress | None:
    """One hop's address: ``203.0.113.7``, ``203.0.113.7:4711``, ``2001:db8::1``,
    ``[2001:db8::1]`` or ``[2001:db8::1]:4711``. None for ``unknown``, an obfuscated
    identifier (``_hidden``) or anything else."""
    if hop is None:
        return None
    hop = hop.strip()
    if hop.startswith("["):
        inside, bracket, port = hop[1:].partition("]")
        if not bracket or (port and not _is_port(port)):
            return None
        address = parse_address(inside)
        return address if address is not None and address.version == 6 else None
    if hop.count(":") == 1:  # IPv4 with a port
        hop, _, port = hop.partition(":")
        if not _is_port(":" + port):
            return None
        address = parse_address(hop)
        return address if address is not None and address.version == 4 else None
    return parse_address(hop)


def _is_port(text: str) -> bool:
    """``:4711``, or an obfuscated port (``:_abc``, RFC 7239 §6.3)."""
    port = text[1:]
    if not text.startswith(":") or not port.isascii():
        return False
    if port.startswith("_"):
        return len(port) > 1 and all(c.isalnum() or c in "._-" for c in port)
    return port.isdigit() and len(port) <= 5 and int(port) <= 65535


# A dotted quad exactly as ``ipaddress`` takes one: four ASCII decimal octets up to 255, no
# leading zeros. Such a text is read by ``inet_aton`` (C) instead of ``ipaddress``'s parser.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def parse_address(text: str | None) -> IPAddress | None:
    if not text:
        return None
    if _DOTTED_QUAD.fullmatch(text):
        return ipaddress.IPv4Address(socket.inet_aton(text))
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
        if ipv4_prefix == 24:  # the default, per beacon: the packed bytes beat any address work
            packed = address.packed
            return f"{packed[0]}.{packed[1]}.{packed[2]}.0"
        mask = (0xFFFFFFFF << (32 - ipv4_prefix)) & 0xFFFFFFFF
        return str(ipaddress.IPv4Address(int(address) & mask))
    mask6 = ((1 << 128) - 1) ^ ((1 << (128 - ipv6_prefix)) - 1)
    return str(ipaddress.IPv6Address(int(address) & mask6))
