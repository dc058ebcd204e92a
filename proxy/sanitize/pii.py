"""Personal values in free text: e-mail addresses, phone, card and IBAN numbers, IP addresses.

Used on every beacon for ``dt``, ``ep.*`` values, item fields and the parts of a URL that are
kept. Each kind of value is one *detector*: a small callable behind the ``Detector`` signature,
registered by name in ``DETECTORS``. ``PiiScrubber`` runs the configured ones and replaces each
match with a fixed token such as ``[email]``, so the text keeps its shape and nothing of the
value survives.

Detectors are built once at import (their regexes compiled then); a call only scans. Before
any regex runs, ``scrub`` looks at cheap features of the text (how many digits, an ``@``, a
``:``) and skips the detectors that cannot match: a title such as ``Products | Demo E-commerce
Store`` has none of them and is returned untouched after a single scan.

Nothing here logs, and no exception message carries a scanned value.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

__all__ = [
    "DEFAULT_DETECTORS",
    "DETECTORS",
    "Detector",
    "PatternDetector",
    "PiiScrubber",
    "contains_pii",
    "iban_valid",
    "luhn_valid",
]

# Features of a text, computed once per scrub(): a detector names the ones a match needs and
# is skipped when the text lacks one. Most titles with digits have a handful ("iPhone 15 Pro
# 128 GB"), too few for a phone or card number. Plain ints, not enum.Flag: this is per call.
HAS_DIGIT = 1
HAS_AT = 2
HAS_COLON = 4
HAS_4_DIGITS = 8
HAS_9_DIGITS = 16
HAS_13_DIGITS = 32

_ANY_DIGIT = re.compile(r"\d").search
_ALL_DIGITS = re.compile(r"\d").findall
_NON_DIGIT = re.compile(r"\D")
_DIGIT_RUN = re.compile(r"\d+")

# Each changing pass removes at least one digit or "@", so the loop ends anyway; the cap only
# bounds the work on adversarial input (a second pass is needed when one value had hidden
# another, e.g. a phone number written right after a card number).
_MAX_PASSES = 4


class Detector(Protocol):
    """One kind of personal value.

    ``needs`` is the set of ``HAS_*`` features a text must have for a match to be possible.
    Calling the detector returns the text with every match replaced by its token, or ``None``
    when nothing matched (so callers need not compare strings).
    """

    @property
    def name(self) -> str: ...

    @property
    def needs(self) -> int: ...

    def __call__(self, text: str) -> str | None: ...


# (candidate, token) -> replacement for the candidate, or None when it is not personal after all.
Confirm = Callable[[str, str], str | None]


@dataclass(frozen=True, slots=True)
class PatternDetector:
    """A regex that finds candidates, and optionally a check (Luhn, mod-97, ...) that confirms
    each one before it is replaced."""

    name: str
    token: str
    needs: int
    pattern: re.Pattern[str]
    confirm: Confirm | None = None

    def __call__(self, text: str) -> str | None:
        if self.confirm is None:
            out, count = self.pattern.subn(self.token, text)
            return out if count else None
        if self.pattern.search(text) is None:
            return None  # the usual case, without building the closure below
        confirm, token = self.confirm, self.token
        hits = 0

        def replace(match: re.Match[str]) -> str:
            nonlocal hits
            candidate = match.group()
            new = confirm(candidate, token)
            if new is None:
                return candidate
            hits += 1
            return new

        out = self.pattern.sub(replace, text)
        return out if hits else None


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod-10) check every payment card number satisfies. ``digits``: digits only."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616 check: length 15-34, and mod-97 of the rearranged number is 1. Spaces allowed."""
    compact = iban.replace(" ", "").upper()
    if not (15 <= len(compact) <= 34 and compact.isascii() and compact.isalnum()
            and compact[:2].isalpha() and compact[2:4].isdigit()):
        return False
    rearranged = compact[4:] + compact[:4]
    # int(c, 36) maps 0-9 to themselves and A-Z to 10-35, as ISO 7064 wants.
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _separator_ends(candidate: str, separators: str) -> Iterable[int]:
    """Positions where a shorter candidate could end (before a separator), longest first."""
    return (i for i in range(len(candidate) - 1, 0, -1) if candidate[i] in separators)


def _confirm_card(candidate: str, token: str) -> str | None:
    digits = _NON_DIGIT.sub("", candidate)
    if _is_card(digits):
        return token
    # A card number followed by more digit groups (expiry, CVV, a second number): the longest
    # prefix at a group boundary that is a valid card is replaced, the rest kept.
    for end in _separator_ends(candidate, " -"):
        if _is_card(_NON_DIGIT.sub("", candidate[:end])):
            return token + candidate[end:]
    return None


def _is_card(digits: str) -> bool:
    # ISO/IEC 7812 major industry identifiers 2-6 are the banking and payment ones (Visa 4,
    # Mastercard 2/5, Amex 3, Discover/UnionPay 6). Excluding 1 keeps 13-digit epoch-millisecond
    # timestamps, common in event parameters, from being taken for cards 10 % of the time.
    return 13 <= len(digits) <= 19 and 2 <= int(digits[0]) <= 6 and luhn_valid(digits)


def _confirm_iban(candidate: str, token: str) -> str | None:
    if iban_valid(candidate):
        return token
    # The pattern also takes the words after an IBAN when they are alphanumeric ("... 00 is
    # mine"): try the longest prefix ending before a space.
    for end in _separator_ends(candidate, " "):
        if iban_valid(candidate[:end]):
            return token + candidate[end:]
    return None


def _confirm_phone(candidate: str, token: str) -> str | None:
    digits = _NON_DIGIT.sub("", candidate)
    if candidate[0] == "+" or candidate.startswith("00"):
        # International prefix: a strong signal, so a run too long to be one number is cut
        # at a group boundary rather than kept whole.
        if _phone_digits_ok(digits, candidate):
            return token
        for end in _separator_ends(candidate, " -.()"):
            if _phone_digits_ok(_NON_DIGIT.sub("", candidate[:end]), candidate):
                return token + candidate[end:]
        return None
    if not 9 <= len(digits) <= 15:
        return None
    groups = _DIGIT_RUN.findall(candidate)
    # "36 38 40 42 44" is a list of sizes, "01 23 45 67 89" a French number: all-two-digit
    # groups count only with the national trunk prefix 0.
    trunk_zero = int(digits[0]) == 0  # int(): digits may be in any script
    if all(len(group) == 2 for group in groups) and not trunk_zero:
        return None
    # Nine digits without the trunk 0 are Spanish or Portuguese numbers, written with spaces;
    # "123-456-789" or "2023.001.45" is a product or document code.
    if len(digits) == 9 and not trunk_zero and " " not in candidate:
        return None
    return token


def _phone_digits_ok(digits: str, candidate: str) -> bool:
    count = len(digits) - 2 if candidate.startswith("00") else len(digits)
    return 9 <= count <= 15


def _confirm_ipv6(candidate: str, token: str) -> str | None:
    # "10:20:30" and "a::b" are candidates too; only a parseable address with a digit counts.
    if not _ANY_DIGIT(candidate):
        return None
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return None
    return token


_EMAIL_CHARS = r"[\w.!#$%&'*+/=?^`{|}~-]"
_EMAIL = re.compile(
    # The look-behind starts a candidate only at the beginning of a run of address characters,
    # which keeps the scan linear on long runs without an "@". "%40" is an encoded "@", as it
    # arrives in URLs and in values that were encoded twice.
    rf"(?<!{_EMAIL_CHARS}){_EMAIL_CHARS}+(?:@|%40)(?:[\w-]+\.)+[\w-]+"
)

# Each pattern opens with a look-ahead for its first character: without it, the engine tries
# every alternative and look-behind at every position of the text (2-3x slower).
_PHONE = re.compile(
    r"""
    (?=[\d+(])
    (?<!\d[ .\-])                              # not the middle of a longer number
    (?:
        (?<![\w+])\+\d[\d \-.()]{6,24}\d          # +44 20 7946 0958, +1 (555) 123-4567
      | (?<![\w+.,])00[1-9][\d \-.()]{5,24}\d    # 0044 20 7946 0958
      | (?<![\w+.,])
        (?:\(\d{2,5}\)[ ]?|\d{2,5}[ .\-])         # area code: "020 ", "(555) ", "06-"
        \d{2,}(?:[ .\-]\d{2,})*                   # groups of two or more digits
      | (?<![\w+.,])0[1-9]\d{8,10}               # 07700900123: trunk prefix, no separators
    )
    # Not glued to a word, not the integer part of a decimal ("123 456 789,00"), not the
    # date of a date-time ("2024-05-12 10:20").
    (?![\w:]|[.,]\d)
    """,
    re.VERBOSE,
)

_CARD = re.compile(r"(?=\d)(?<![\d+])(?<!\d[ \-])\d(?:[ \-]?\d){12,22}(?!\d)")

_IBAN = re.compile(
    r"(?=[A-Za-z])(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?:[ ]?[A-Za-z0-9]){11,30}(?![A-Za-z0-9])",
    re.ASCII,  # IBANs are ASCII; also keeps int(c, 36) away from other scripts' letters
)

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(
    # "v1.2.3.4" (glued to a word) and "122.0.6261.69" (octet > 255) are versions, not addresses.
    rf"(?=\d)(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\d|\.\d)",
    re.ASCII,
)

_IPV6 = re.compile(
    r"(?=[0-9A-Fa-f:])(?<![\w:.])"
    r"(?:[0-9A-Fa-f]{0,4}:){2,7}"                          # groups, "::" included
    r"(?:[0-9A-Fa-f]{1,4}|\d{1,3}(?:\.\d{1,3}){3})?"       # last group, or IPv4-mapped
    r"(?![\w:]|\.\d)",
    re.ASCII,
)

_UK_POSTCODE = re.compile(
    r"(?=[A-PR-UWYZ])(?<![A-Za-z0-9])"
    r"[A-PR-UWYZ][A-HK-Y]?\d[A-Z\d]? ?\d[ABD-HJLNP-UW-Z]{2}"  # outward, inward code
    r"(?![A-Za-z0-9])",
    re.ASCII,
)

DETECTORS: Mapping[str, Detector] = MappingProxyType({
    # Order matters and is fixed here, whatever order the configuration lists names in: an
    # e-mail's digits must not be taken for a phone number, an IBAN's for a card, a card's or
    # an address's for a phone number.
    #
    # email: local@domain.tld, also with "%40"; no bare "@handle" or "user@localhost".
    "email": PatternDetector("email", "[email]", HAS_AT, _EMAIL),
    # iban: country code, check digits and BBAN, spaces allowed, upper or lower case; replaced
    # only if the mod-97 check passes.
    "iban": PatternDetector("iban", "[iban]", HAS_DIGIT, _IBAN, _confirm_iban),
    # card: 13-19 digits, spaces or dashes allowed, industry 2-6, replaced only if Luhn-valid.
    "card": PatternDetector("card", "[card]", HAS_13_DIGITS, _CARD, _confirm_card),
    # ipv6: anything ipaddress accepts as IPv6 with at least one digit (after a ":" scan).
    "ipv6": PatternDetector("ipv6", "[ip]", HAS_DIGIT | HAS_COLON, _IPV6, _confirm_ipv6),
    # ipv4: dotted quad with octets 0-255, not glued to a word or a longer number.
    "ipv4": PatternDetector("ipv4", "[ip]", HAS_4_DIGITS, _IPV4),
    # phone: international (+ or 00) or national with separators or a trunk 0, 9-15 digits.
    # Left alone: years, dates, prices, versions, ISO timestamps, epoch times, short numbers.
    "phone": PatternDetector("phone", "[phone]", HAS_9_DIGITS, _PHONE, _confirm_phone),
    # uk_postcode: full postcode ("SW1A 1AA"), upper case. Not in the default set: it also
    # matches product names ("G6 4GB"), and it locates a street, not a person.
    "uk_postcode": PatternDetector("uk_postcode", "[postcode]", HAS_DIGIT, _UK_POSTCODE),
})

DEFAULT_DETECTORS: tuple[str, ...] = ("email", "iban", "card", "ipv6", "ipv4", "phone")


def _features(text: str) -> int:
    present = 0
    if _ANY_DIGIT(text):
        digits = len(_ALL_DIGITS(text))
        present |= HAS_DIGIT
        if digits >= 4:
            present |= HAS_4_DIGITS
        if digits >= 9:
            present |= HAS_9_DIGITS
        if digits >= 13:
            present |= HAS_13_DIGITS
    if "@" in text or "%40" in text:
        present |= HAS_AT
    if ":" in text:
        present |= HAS_COLON
    return present


class PiiScrubber:
    """Replaces personal values in text with tokens; built once from detector names."""

    def __init__(self, detectors: Sequence[str] = DEFAULT_DETECTORS) -> None:
        """``detectors``: names from ``DETECTORS``. They run in the table's order, not the
        given one. An unknown name raises ``ValueError`` naming it."""
        wanted = {detectors} if isinstance(detectors, str) else set(detectors)
        unknown = sorted(wanted - DETECTORS.keys())
        if unknown:
            raise ValueError(
                f"unknown PII detector(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(DETECTORS)}"
            )
        self._detectors = tuple(d for name, d in DETECTORS.items() if name in wanted)

    @property
    def names(self) -> tuple[str, ...]:
        """The active detectors, in the order they run."""
        return tuple(detector.name for detector in self._detectors)

    def scrub(self, text: str) -> tuple[str, tuple[str, ...]]:
        """Return ``text`` with every detected value replaced, and the names of the detectors
        that fired. When none fired, the very same ``text`` object and ``()``."""
        present = _features(text)
        if not present:
            return text, ()
        fired: list[str] = []
        out = text
        for _ in range(_MAX_PASSES):
            changed = False
            for detector in self._detectors:
                if detector.needs & ~present:
                    continue
                new = detector(out)
                if new is not None:
                    out, changed = new, True
                    if detector.name not in fired:
                        fired.append(detector.name)
            if not changed:
                break
            present = _features(out)
        if not fired:
            return text, ()
        return out, tuple(fired)

    def contains_pii(self, text: str) -> bool:
        """Whether any active detector fires on ``text``."""
        return bool(self.scrub(text)[1])


_DEFAULT_SCRUBBER = PiiScrubber()


def contains_pii(text: str) -> bool:
    """Whether the default detector set fires on ``text`` (for tests and reports)."""
    return _DEFAULT_SCRUBBER.contains_pii(text)
