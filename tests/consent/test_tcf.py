"""IAB TCF: the in-house core-segment decoder and the purposes/vendors rule (§5).

TC strings are built here by a small encoder (bit writer -> base64url) so each field can be
set on its own; the one real string comes from the captured fixtures.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import pytest

from proxy.consent.tcf import TcfOptions, compile_source, decode_core
from proxy.consent.verdict import ConsentInput, Verdict
from proxy.ingest.cookies import parse_cookie_header

GRANT, DENY, ABSTAIN = Verdict.GRANT, Verdict.DENY, Verdict.ABSTAIN

# Fixture id 38 (tests/fixtures/consent-cookies.jsonl), a Didomi-written TC string.
REAL = (
    "CQbB_cAQbB_cAAHABBENCFFsAP_gAAAAAAAAHXwCAAIAAqABaAFsAUgBZgF5gOvAAAAKSgAwABBd8pABgACC75CAD"
    "AAEF3x0AGAAILvhIAMAAQXf.f_wAAAAAAAAA"
)


class BitWriter:
    def __init__(self) -> None:
        self.bits: list[str] = []

    def add(self, value: int, width: int) -> None:
        assert 0 <= value < 1 << width
        self.bits.append(format(value, f"0{width}b"))

    def flag(self, value: bool) -> None:
        self.add(int(value), 1)

    def ids(self, ids: set[int], width: int) -> None:
        self.bits.append("".join("1" if i + 1 in ids else "0" for i in range(width)))

    def letters(self, text: str) -> None:
        for char in text:
            self.add(ord(char) - ord("A"), 6)

    def base64url(self) -> str:
        bits = "".join(self.bits)
        bits += "0" * (-len(bits) % 8)
        data = int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""
        return base64.urlsafe_b64encode(data).decode().rstrip("=")


def runs(ids: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for vendor in sorted(ids):
        if out and vendor == out[-1][1] + 1:
            out[-1] = (out[-1][0], vendor)
        else:
            out.append((vendor, vendor))
    return out


@dataclass(frozen=True)
class TcString:
    version: int = 2
    cmp_id: int = 7
    vendor_list_version: int = 133
    policy_version: int = 5
    is_service_specific: bool = True
    purposes: frozenset[int] = frozenset({1, 2, 3, 4})
    purposes_li: frozenset[int] = frozenset()
    purpose_one_treatment: bool = False
    vendors: frozenset[int] = frozenset({755})
    encoding: Literal["bitfield", "range"] = "bitfield"
    # Raw (is_range, first, last) entries for the range encoding, to build malformed ones.
    entries: tuple[tuple[int, int], ...] | None = None
    max_vendor_id: int | None = None
    vendors_li: frozenset[int] = frozenset()
    segments: tuple[str, ...] = field(default=())

    def encode(self) -> str:
        w = BitWriter()
        w.add(self.version, 6)
        w.add(16_000_000_000, 36)  # created, deciseconds
        w.add(16_000_000_000, 36)  # last updated
        w.add(self.cmp_id, 12)
        w.add(3, 12)  # CMP version
        w.add(1, 6)  # consent screen
        w.letters("EN")
        w.add(self.vendor_list_version, 12)
        w.add(self.policy_version, 6)
        w.flag(self.is_service_specific)
        w.flag(False)  # non-standard texts
        w.add(0, 12)  # special feature opt-ins
        w.ids(set(self.purposes), 24)
        w.ids(set(self.purposes_li), 24)
        w.flag(self.purpose_one_treatment)
        w.letters("DE")
        entries = self.entries if self.entries is not None else tuple(runs(set(self.vendors)))
        top = max([last for _, last in entries] + [0])
        w.add(self.max_vendor_id if self.max_vendor_id is not None else top, 16)
        if self.encoding == "range":
            w.flag(True)
            w.add(len(entries), 12)
            for first, last in entries:
                w.flag(first != last)
                w.add(first, 16)
                if first != last:
                    w.add(last, 16)
        else:
            w.flag(False)
            w.ids(set(self.vendors), self.max_vendor_id if self.max_vendor_id is not None else top)
        # Vendor legitimate interests (bit field) and no publisher restrictions: never read.
        li_top = max(self.vendors_li, default=0)
        w.add(li_top, 16)
        w.flag(False)
        w.ids(set(self.vendors_li), li_top)
        w.add(0, 12)
        return ".".join((w.base64url(), *self.segments))


def verdict(header: str, **options: Any) -> Verdict:
    source = compile_source(TcfOptions(**options))
    return source(ConsentInput(cookies=parse_cookie_header(header), events=(), now=0.0))


def cookie(tc: TcString, name: str = "euconsent-v2") -> str:
    return f"{name}={tc.encode()}"


BASE = TcString()


def test_the_real_fixture_string_decodes_field_by_field() -> None:
    core = decode_core(REAL)
    assert core is not None
    assert core.version == 2
    assert core.cmp_id == 7
    assert core.vendor_list_version == 133
    assert core.policy_version == 5
    assert core.is_service_specific is True
    assert core.purpose_one_treatment is False
    assert core.purposes_consent == frozenset(range(1, 12))
    assert core.purposes_legitimate_interest == frozenset()
    assert core.vendor_runs == (
        (16, 16), (42, 42), (45, 45), (91, 91), (164, 164), (358, 358), (755, 755), (943, 943),
    )
    assert core.has_vendor_consent(755)
    assert not core.has_vendor_consent(754)
    assert verdict(f"euconsent-v2={REAL}") is GRANT


@pytest.mark.parametrize(
    "tc",
    [
        BASE,
        replace(BASE, encoding="range"),
        replace(BASE, vendors=frozenset({1, 2, 3, 755, 900})),
        replace(BASE, vendors=frozenset(range(700, 801)), encoding="range"),
        replace(BASE, entries=((1, 65535),), encoding="range"),
        replace(BASE, entries=((800, 900), (755, 755)), encoding="range"),  # unsorted entries
        replace(BASE, entries=((700, 760), (750, 800)), encoding="range"),  # overlapping
        replace(BASE, max_vendor_id=2000),
        replace(BASE, policy_version=4),
        replace(BASE, segments=("f_wAAAAAAAAA", "garbage")),  # later segments are not read
    ],
    ids=repr,
)
def test_purpose_one_and_vendor_755_consent_grant(tc: TcString) -> None:
    assert verdict(cookie(tc)) is GRANT


@pytest.mark.parametrize(
    "tc",
    [
        replace(BASE, purposes=frozenset({2, 3, 4})),
        replace(BASE, purposes=frozenset()),
        replace(BASE, vendors=frozenset({754, 756})),
        replace(BASE, vendors=frozenset()),
        replace(BASE, vendors=frozenset({754, 756}), encoding="range"),
        replace(BASE, entries=((1, 754), (756, 65535)), encoding="range"),
        replace(BASE, entries=(), encoding="range"),
        replace(BASE, vendors=frozenset({755}), max_vendor_id=700),  # bit field cut short
        # Legitimate interest is never consent, for purposes or for vendors.
        replace(BASE, purposes=frozenset({2}), purposes_li=frozenset({1})),
        replace(BASE, vendors=frozenset({1}), vendors_li=frozenset({755})),
    ],
    ids=repr,
)
def test_a_valid_string_missing_purpose_or_vendor_denies(tc: TcString) -> None:
    assert verdict(cookie(tc)) is DENY


@pytest.mark.parametrize(
    "tc",
    [
        replace(BASE, policy_version=3),
        replace(BASE, policy_version=2),
        replace(BASE, is_service_specific=False),
        replace(BASE, purpose_one_treatment=True),
    ],
    ids=repr,
)
def test_old_policy_global_scope_or_purpose_one_treatment_abstain(tc: TcString) -> None:
    core = decode_core(tc.encode())
    assert core is not None
    assert (core.policy_version, core.is_service_specific, core.purpose_one_treatment) == (
        tc.policy_version, tc.is_service_specific, tc.purpose_one_treatment,
    )
    assert verdict(cookie(tc)) is ABSTAIN
    # Even a refusal abstains: such a string does not say what it seems to say.
    assert verdict(cookie(replace(tc, purposes=frozenset()))) is ABSTAIN


@pytest.mark.parametrize(
    "value",
    [
        "",
        ".",
        "A",
        "AAAAA",  # a length no padding can repair
        "not base64!",
        "CQbB+cAQbB/cAA",  # the standard alphabet is not base64url
        "é",
        BASE.encode()[:1],
        BASE.encode()[:20],
        BASE.encode()[:36],  # ends before the vendor section
        BASE.encode()[:100],  # ends inside the vendor bit field
        replace(BASE, encoding="range", vendors=frozenset(range(1, 60, 2))).encode()[:50],
        replace(BASE, version=1).encode(),
        replace(BASE, version=3).encode(),
        replace(BASE, entries=((800, 700),), encoding="range").encode(),  # last before first
        replace(BASE, entries=((0, 0),), encoding="range").encode(),  # vendor ids start at 1
        REAL[:50],  # ends inside the vendor ranges
    ],
    ids=lambda value: repr(value)[:40],
)
def test_truncated_or_malformed_strings_abstain(value: str) -> None:
    assert verdict(f"euconsent-v2={value}") is ABSTAIN


@pytest.mark.parametrize(
    "value",
    [BASE.encode()[:1], BASE.encode()[:100], replace(BASE, version=1).encode(), "AAAAA", "é"],
    ids=lambda value: repr(value)[:40],
)
def test_decode_core_returns_none_for_what_it_cannot_read(value: str) -> None:
    assert decode_core(value) is None


def test_a_range_covering_every_vendor_stays_compact() -> None:
    core = decode_core(replace(BASE, entries=((1, 65535),), encoding="range").encode())
    assert core is not None
    assert core.vendor_runs == ((1, 65535),)
    assert core.has_vendor_consent(1) and core.has_vendor_consent(65535)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (cookie(BASE, "eupubconsent-v2"), GRANT),
        (cookie(BASE) + "; " + cookie(replace(BASE, vendors=frozenset()), "eupubconsent-v2"), DENY),
        (cookie(replace(BASE, purposes=frozenset())) + "; " + cookie(BASE), DENY),
        ("euconsent-v2=junk; " + cookie(BASE), GRANT),
        (cookie(replace(BASE, policy_version=3)) + "; " + cookie(BASE, "eupubconsent-v2"), GRANT),
        ("euconsent-v2=junk; eupubconsent-v2=", ABSTAIN),
        ("", ABSTAIN),
        (cookie(BASE, "euconsent"), ABSTAIN),
    ],
    ids=lambda value: repr(value)[:60],
)
def test_every_copy_of_both_cookies_counts_and_deny_wins(header: str, expected: Verdict) -> None:
    assert verdict(header) is expected


@pytest.mark.parametrize(
    ("tc", "options", "expected"),
    [
        (replace(BASE, vendors=frozenset({1})), {"vendors": (1,)}, GRANT),
        (replace(BASE, vendors=frozenset({1})), {"vendors": ()}, GRANT),  # purposes only
        (BASE, {"purposes": (1, 4)}, GRANT),
        (BASE, {"purposes": (1, 7)}, DENY),
        (BASE, {"vendors": (755, 1)}, DENY),
        (replace(BASE, vendors=frozenset({1, 755})), {"vendors": (755, 1)}, GRANT),
    ],
    ids=repr,
)
def test_purposes_and_vendors_are_options(
    tc: TcString, options: dict[str, Any], expected: Verdict
) -> None:
    assert verdict(cookie(tc), **options) is expected


def test_cookie_names_are_options() -> None:
    assert verdict(cookie(BASE, "tcf"), cookies=("tcf",)) is GRANT
    assert verdict(cookie(BASE), cookies=("tcf",)) is ABSTAIN


@pytest.mark.parametrize(
    "options",
    [{"cookies": ()}, {"purposes": ()}, {"purposes": (0,)}, {"purposes": (25,)},
     {"vendors": (0,)}, {"vendors": (65536,)}],
    ids=repr,
)
def test_invalid_options_fail_at_compile_time(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="tcf"):
        compile_source(TcfOptions(**options))
