"""The client's address: the socket peer, or the right-most untrusted hop of the forwarding
chain behind trusted proxies, from every line of the one header the proxies write."""

from __future__ import annotations

import ipaddress

import pytest
from multidict import CIMultiDict

from proxy.ingest.client import (
    MAX_HOPS,
    ClientAddressResolver,
    ForwardedHeader,
    forwarded_hops,
    parse_hop,
)

TRUSTED = ["127.0.0.0/8", "10.0.0.0/8", "2001:db8:ffff::/48"]
CLIENT = "203.0.113.57"
PROXY = "10.1.2.3"


def resolve(
    peer: str | None,
    lines: list[tuple[str, str]],
    header: ForwardedHeader = "x-forwarded-for",
) -> str | None:
    resolver = ClientAddressResolver(TRUSTED, header)
    address = resolver.resolve(peer, CIMultiDict(lines))
    return None if address is None else str(address)


XFF = "X-Forwarded-For"


@pytest.mark.parametrize(
    ("peer", "lines", "expected"),
    [
        pytest.param(CLIENT, [], CLIENT, id="untrusted peer, no header"),
        pytest.param(CLIENT, [(XFF, "198.51.100.9")], CLIENT,
                     id="untrusted peer: its header is not read"),
        pytest.param(PROXY, [], PROXY, id="trusted peer without a header is the client"),
        pytest.param(PROXY, [(XFF, CLIENT)], CLIENT, id="one hop"),
        pytest.param(PROXY, [(XFF, f"198.51.100.9, {CLIENT}")], CLIENT,
                     id="the client's own claim on the left is not read"),
        pytest.param(PROXY, [(XFF, "198.51.100.9"), (XFF, CLIENT)], CLIENT,
                     id="two lines: HAProxy's forwardfor appended its own"),
        pytest.param(PROXY, [(XFF, "198.51.100.9, 192.0.2.1"), (XFF, f"{CLIENT}, 10.9.9.9")],
                     CLIENT, id="two lines, trusted hop on the right of the second"),
        pytest.param(PROXY, [(XFF, f"{CLIENT}, 10.9.9.9, 127.0.0.1")], CLIENT,
                     id="trusted hops are walked over"),
        pytest.param(PROXY, [(XFF, "10.9.9.9, 127.0.0.1")], "10.9.9.9",
                     id="every hop trusted: the left-most is the client"),
        pytest.param(PROXY, [(XFF, f"{CLIENT}:4711")], CLIENT, id="IPv4 with a port"),
        pytest.param(PROXY, [(XFF, "2001:db8::1")], "2001:db8::1", id="IPv6"),
        pytest.param(PROXY, [(XFF, "[2001:db8::1]:4711")], "2001:db8::1", id="IPv6 with a port"),
        pytest.param(PROXY, [(XFF, f"::ffff:{CLIENT}")], CLIENT, id="IPv4-mapped IPv6"),
        pytest.param("::ffff:10.1.2.3", [(XFF, CLIENT)], CLIENT, id="IPv4-mapped trusted peer"),
        pytest.param(PROXY, [(XFF, f"{CLIENT}, garbage")], None,
                     id="garbage where the walk reaches it: unknown, not the left"),
        pytest.param(PROXY, [(XFF, f"{CLIENT}, unknown")], None, id="unknown"),
        pytest.param(PROXY, [(XFF, f"{CLIENT},")], None, id="an empty hop"),
        pytest.param(PROXY, [(XFF, "")], None, id="an empty header"),
        pytest.param(PROXY, [(XFF, f"garbage, {CLIENT}")], CLIENT,
                     id="garbage left of the client is never reached"),
        pytest.param(PROXY, [(XFF, f"{CLIENT}:99999")], None, id="not a port"),
        pytest.param(PROXY, [(XFF, f'"{CLIENT}"')], None, id="quoted in X-Forwarded-For"),
        pytest.param(PROXY, [(XFF, CLIENT), ("Forwarded", "for=198.51.100.9")], CLIENT,
                     id="Forwarded is not read when X-Forwarded-For is configured"),
        pytest.param(PROXY, [("Forwarded", "for=198.51.100.9")], PROXY,
                     id="only a Forwarded header: not read, the peer stands"),
        pytest.param(None, [(XFF, CLIENT)], None, id="no peer"),
        pytest.param("not an address", [(XFF, CLIENT)], None, id="unreadable peer"),
    ],
)
def test_x_forwarded_for(peer: str | None, lines: list[tuple[str, str]],
                         expected: str | None) -> None:
    assert resolve(peer, lines) == expected


FWD = "Forwarded"


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        pytest.param([(FWD, f"for={CLIENT}")], CLIENT, id="token"),
        pytest.param([(FWD, f'for="{CLIENT}"')], CLIENT, id="quoted"),
        pytest.param([(FWD, f"For={CLIENT};proto=https;by={PROXY}")], CLIENT,
                     id="with other pairs, name in any case"),
        pytest.param([(FWD, f'for="{CLIENT}:4711"')], CLIENT, id="IPv4 with a port"),
        pytest.param([(FWD, 'for="[2001:db8:cafe::17]:4711"')], "2001:db8:cafe::17",
                     id="IPv6 in brackets with a port"),
        pytest.param([(FWD, 'for="[2001:db8:cafe::17]"')], "2001:db8:cafe::17",
                     id="IPv6 in brackets"),
        pytest.param([(FWD, f'for="{CLIENT}:_p0rt"')], CLIENT, id="obfuscated port"),
        pytest.param([(FWD, f"for=198.51.100.9, for={CLIENT}")], CLIENT,
                     id="the client's claim on the left is not read"),
        pytest.param([(FWD, "for=198.51.100.9"), (FWD, f"for={CLIENT}")], CLIENT,
                     id="two lines"),
        pytest.param([(FWD, f'for={CLIENT}, for="[2001:db8:ffff::1]", for={PROXY}')], CLIENT,
                     id="trusted hops, IPv6 among them"),
        pytest.param([(FWD, f'for={CLIENT}, for="_hidden"')], None, id="obfuscated node"),
        pytest.param([(FWD, f"for={CLIENT}, for=unknown")], None, id="unknown"),
        pytest.param([(FWD, f"for={CLIENT}, proto=https")], None, id="an element without for"),
        pytest.param([(FWD, f"for={CLIENT}, for=1.2.3.4;for=5.6.7.8")], None,
                     id="an element with two for"),
        pytest.param([(FWD, f'for={CLIENT}, for="1.2.3.4')], None, id="an open quote"),
        pytest.param([(FWD, f"for={CLIENT}, for=[2001:db8::1")], None, id="an open bracket"),
        pytest.param([(FWD, 'for="1.2.3.4, for=5.6.7.8"')], None,
                     id="a comma inside quotes does not split"),
        pytest.param([(FWD, f"for={CLIENT}, garbage")], None, id="garbage"),
        pytest.param([(FWD, "for=198.51.100.9"), (XFF, CLIENT)], "198.51.100.9",
                     id="X-Forwarded-For is not read when Forwarded is configured"),
        pytest.param([(XFF, CLIENT)], PROXY, id="only X-Forwarded-For: not read"),
    ],
)
def test_forwarded(lines: list[tuple[str, str]], expected: str | None) -> None:
    assert resolve(PROXY, lines, "forwarded") == expected


def test_escapes_inside_a_quoted_string_are_read() -> None:
    assert forwarded_hops([r'for="203.0.113.\57";by="a\"b"']) == ["203.0.113.57"]


@pytest.mark.parametrize(
    "hop", ["unknown", "_hidden", "", " ", "1.2.3.4:", "1.2.3.4:x", "[::1", "[1.2.3.4]",
            "2001:db8::1:4711:", "999.1.1.1", None],
)
def test_an_unreadable_hop_is_none(hop: str | None) -> None:
    assert parse_hop(hop) is None


def test_a_chain_of_trusted_hops_longer_than_the_walk_is_unknown() -> None:
    chain = ", ".join(["10.0.0.1"] * (MAX_HOPS + 1))
    assert resolve(PROXY, [(XFF, f"{CLIENT}, {chain}")]) is None
    short = ", ".join(["10.0.0.1"] * (MAX_HOPS - 1))
    assert resolve(PROXY, [(XFF, f"{CLIENT}, {short}")]) == CLIENT


def test_the_header_named_is_the_one_read() -> None:
    assert ClientAddressResolver(TRUSTED).header == "X-Forwarded-For"
    assert ClientAddressResolver(TRUSTED, "forwarded").header == "Forwarded"
    assert isinstance(
        ClientAddressResolver(TRUSTED).resolve(PROXY, CIMultiDict([(XFF, CLIENT)])),
        ipaddress.IPv4Address,
    )
