"""IAB TCF v2.2 / 2.3: the TC string in ``euconsent-v2`` (OneTrust: ``eupubconsent-v2``) (§5).

Only the core segment is decoded, written in-house rather than depending on an unmaintained
package. GRANT needs every configured purpose and vendor in the *consent* bits: legitimate
interest is never consent for analytics.
"""

from __future__ import annotations

import base64
import bisect
import re
from dataclasses import dataclass
from typing import Annotated

import msgspec

from proxy.consent.reading import Names, combine, require
from proxy.consent.verdict import ConsentInput, ConsentSource, Verdict
from proxy.ingest.cookies import unquote_twice

TCF_VERSION = 2
MIN_POLICY_VERSION = 4  # TCF v2.2; earlier policies let legitimate interest stand in
GOOGLE_VENDOR_ID = 755

_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_PURPOSE_BITS = 24
_MAX_VENDOR_ID = 0xFFFF

PurposeId = Annotated[int, msgspec.Meta(ge=1, le=_PURPOSE_BITS)]
VendorId = Annotated[int, msgspec.Meta(ge=1, le=_MAX_VENDOR_ID)]


class TcfOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                 tag_field="type", tag="tcf"):
    cookies: Names = ("euconsent-v2", "eupubconsent-v2")
    purposes: Annotated[tuple[PurposeId, ...], msgspec.Meta(min_length=1)] = (1,)
    vendors: tuple[VendorId, ...] = (GOOGLE_VENDOR_ID,)


@dataclass(frozen=True, slots=True)
class TcfCore:
    """The fields of a TC string's core segment that a consent decision needs."""

    version: int
    cmp_id: int
    vendor_list_version: int
    policy_version: int
    is_service_specific: bool
    purpose_one_treatment: bool
    purposes_consent: frozenset[int]
    purposes_legitimate_interest: frozenset[int]
    # Consented vendor ids as sorted, disjoint, inclusive (first, last) runs: a range-encoded
    # string can name 65535 vendors in a few bytes, too many to expand per request.
    vendor_runs: tuple[tuple[int, int], ...]

    def has_vendor_consent(self, vendor_id: int) -> bool:
        index = bisect.bisect_right(self.vendor_runs, (vendor_id, _MAX_VENDOR_ID + 1)) - 1
        return index >= 0 and self.vendor_runs[index][0] <= vendor_id <= self.vendor_runs[index][1]


class _ShortRead(Exception):
    pass


class _BitReader:
    """Big-endian bits of the decoded segment, kept as a ``0``/``1`` string for slicing."""

    def __init__(self, data: bytes) -> None:
        self.bits = "".join(f"{byte:08b}" for byte in data)
        self.pos = 0

    def take(self, width: int) -> str:
        end = self.pos + width
        if end > len(self.bits):
            raise _ShortRead
        chunk, self.pos = self.bits[self.pos:end], end
        return chunk

    def uint(self, width: int) -> int:
        return int(self.take(width), 2)

    def flag(self) -> bool:
        return self.take(1) == "1"


def _ids(field: str) -> frozenset[int]:
    return frozenset(index + 1 for index, bit in enumerate(field) if bit == "1")


def _bitfield_runs(field: str) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    start = field.find("1")
    while start != -1:
        end = field.find("0", start)
        end = len(field) if end == -1 else end
        runs.append((start + 1, end))  # bit i is vendor i + 1
        start = field.find("1", end)
    return runs


def _range_runs(reader: _BitReader) -> list[tuple[int, int]] | None:
    runs: list[tuple[int, int]] = []
    for _ in range(reader.uint(12)):
        is_range = reader.flag()
        first = reader.uint(16)
        last = reader.uint(16) if is_range else first
        if first == 0 or last < first:
            return None
        runs.append((first, last))
    runs.sort()
    merged: list[tuple[int, int]] = []
    for first, last in runs:
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def decode_core(s: str) -> TcfCore | None:
    """Decode a TC string's core segment; None if it is not a well-formed v2 core."""
    segment = s.strip().split(".", 1)[0]
    if not _BASE64URL.fullmatch(segment):
        return None
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except ValueError:  # binascii.Error: a length no padding can repair
        return None
    reader = _BitReader(data)
    try:
        version = reader.uint(6)
        if version != TCF_VERSION:
            return None
        reader.take(36 + 36)  # created, last updated
        cmp_id = reader.uint(12)
        reader.take(12 + 6 + 12)  # CMP version, consent screen, consent language
        vendor_list_version = reader.uint(12)
        policy_version = reader.uint(6)
        is_service_specific = reader.flag()
        reader.take(1 + 12)  # non-standard texts, special feature opt-ins
        purposes_consent = _ids(reader.take(_PURPOSE_BITS))
        purposes_li = _ids(reader.take(_PURPOSE_BITS))
        purpose_one_treatment = reader.flag()
        reader.take(12)  # publisher country
        max_vendor_id = reader.uint(16)
        runs = _range_runs(reader) if reader.flag() else _bitfield_runs(reader.take(max_vendor_id))
    except _ShortRead:
        return None
    if runs is None:
        return None
    return TcfCore(
        version=version,
        cmp_id=cmp_id,
        vendor_list_version=vendor_list_version,
        policy_version=policy_version,
        is_service_specific=is_service_specific,
        purpose_one_treatment=purpose_one_treatment,
        purposes_consent=purposes_consent,
        purposes_legitimate_interest=purposes_li,
        vendor_runs=tuple(runs),
    )


def value_verdict(raw: str, purposes: tuple[int, ...], vendors: tuple[int, ...]) -> Verdict:
    """The verdict of one TC string."""
    core = decode_core(unquote_twice(raw))
    if (
        core is None
        or core.policy_version < MIN_POLICY_VERSION
        or not core.is_service_specific
        or core.purpose_one_treatment
    ):
        return Verdict.ABSTAIN
    granted = all(purpose in core.purposes_consent for purpose in purposes) and all(
        core.has_vendor_consent(vendor) for vendor in vendors
    )
    return Verdict.GRANT if granted else Verdict.DENY


def compile_source(options: TcfOptions) -> ConsentSource:
    require("tcf", "cookies", options.cookies)
    if not options.purposes:
        raise ValueError("consent source 'tcf': option 'purposes' must not be empty")
    if not all(1 <= purpose <= _PURPOSE_BITS for purpose in options.purposes):
        raise ValueError("consent source 'tcf': option 'purposes' holds ids from 1 to 24")
    if not all(1 <= vendor <= _MAX_VENDOR_ID for vendor in options.vendors):
        raise ValueError("consent source 'tcf': option 'vendors' holds ids from 1 to 65535")
    names = tuple(dict.fromkeys(options.cookies))
    purposes, vendors = options.purposes, options.vendors

    def tcf(inp: ConsentInput) -> Verdict:
        return combine(
            value_verdict(value, purposes, vendors)
            for name in names
            for value in inp.cookies.get(name, ())
        )

    return tcf
