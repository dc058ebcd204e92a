"""Numbers that identify a person: phone numbers, payment cards, IBANs and national identity
numbers. A regex finds candidates; a library made for the kind of number confirms each one.

What each detector needs to fire (the README's table says the same):

- ``phone`` (libphonenumber, ``phonenumbers``): 9-15 digits, separators `` -./()`` allowed.
  With ``+`` or ``00``: any such number. Without: a North American number
  (``[2-9]XXXXXXXXX``, with or without the leading 1) where a NANP region is configured;
  a number written with its trunk prefix (``0``) that fits the numbering plan of a configured
  region (libphonenumber's metadata: length and leading digits); 11 digits or more that start
  with a configured region's country code and fit its plan (an international number whose
  ``+`` was lost); in a region without a trunk prefix (Spain, Italy, ...), a number
  libphonenumber holds valid. Never: dates, dotted
  versions, valid ISBNs, lists of two-digit sizes, decimals, bare runs of 9 digits.
- ``card`` (``stdnum.luhn``): 13-19 digits, separators `` -.`` allowed, industry 2-6, Luhn
  valid, and not a valid EAN-13 barcode of 13 digits.
- ``iban`` (``stdnum.iban``): country code, check digits and BBAN, separators allowed, mod 97.
- ``national_id`` (``python-stdnum``; the NINO by its format: it has no check digit):
  US SSN written ``AAA-GG-SSSS`` (area, group and serial rules), French NIR (key mod 97),
  UK NINO (format), German tax id (ISO 7064 check digit), Dutch BSN (11-test), Spanish
  DNI and NIE (check letter), Italian codice fiscale (check letter); and any 8-15 digit
  number right after its label (``SSN 536221234``, ``BSN: 111222333``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import phonenumbers
from stdnum import ean, iban, isbn, luhn
from stdnum.de import idnr
from stdnum.es import dni, nie
from stdnum.fr import nir
from stdnum.it import codicefiscale
from stdnum.nl import bsn
from stdnum.us import ssn

from proxy.sanitize.detector import (
    HAS_4_DIGITS,
    HAS_9_DIGITS,
    HAS_13_DIGITS,
    HAS_DIGIT,
    PatternDetector,
    separator_ends,
    substitute,
)

__all__ = ["PhoneDetector", "card_detector", "iban_detector", "national_id_detector"]

_NON_DIGIT = re.compile(r"\D")
_DIGIT_RUN = re.compile(r"\d+")

# ---------------------------------------------------------------------------------------------
# Phone numbers

# Each pattern opens with a look-ahead for its first character: without it, the engine tries
# every alternative and look-behind at every position of the text.
_PHONE = re.compile(
    r"""
    (?=[\d+(])
    (?<![\w+.,])(?<!\d[ .\-/])                  # not the middle of a word or longer number
    (?:\+|\(\+?)?                               # international "+", or "(" of an area code
    \d[\d \-./()]{5,28}\d
    # Not glued to a word, not the integer part of a decimal ("123 456 789,00"), not the
    # date of a date-time ("2024-05-12 10:20").
    (?![\w:]|[.,]\d)
    """,
    re.VERBOSE,
)
_NANP = re.compile(r"1?[2-9]\d{9}")  # area code 2-9; fictional exchanges (555-123-…) too
# Dates in the usual orders, four-digit years: "2024-05-12", "12/05/2024", "05.31.2024".
_DATE = re.compile(
    r"(?:19|20)\d\d[-./](?:0?[1-9]|1[0-2])[-./](?:0?[1-9]|[12]\d|3[01])(?!\d)"
    r"|(?<!\d)(?:0?[1-9]|[12]\d|3[01])[-./](?:0?[1-9]|[12]\d|3[01])[-./](?:19|20)\d\d"
)
# ISBN-13 (978/979), or ISBN-10 in its four hyphenated parts ending in the check digit; a
# ten-digit phone number passes ISBN-10's check one time in eleven, so no other shape counts.
_ISBN_SHAPE = re.compile(r"97[89][- ]?(?:\d[- ]?){9}\d|\d{1,5}-\d{1,7}-\d{1,7}-[\dX]")
_AREA_SLASH = re.compile(r"\(?0\d{1,5}\)?\s?/\s?\d[\d \-]*")
_DOTTED_SINGLE = re.compile(r"(?:^|\.)\d(?:\.|$)")  # a one-digit group in "122.0.6261.69"
# A phone number has at most this many digit groups; longer candidates are tried in windows.
_MAX_GROUPS = 8


@dataclass(frozen=True, slots=True)
class _Plan:
    """One configured region's numbering plan, from libphonenumber's metadata."""

    region: str
    code: str  # the country calling code, as digits
    prefix: str  # the national (trunk) prefix, "" where the region has none
    lengths: frozenset[int]
    pattern: Callable[[str], object]  # fullmatch of the national number


def _plans(regions: Iterable[str]) -> tuple[tuple[_Plan, ...], tuple[_Plan, ...], bool]:
    trunk: list[_Plan] = []
    plain: list[_Plan] = []
    nanp = False
    for region in sorted(set(regions)):
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
        if metadata is None:
            raise ValueError(f"{region!r} is not a region libphonenumber knows")
        if metadata.country_code == 1:
            nanp = True
            continue
        general = metadata.general_desc
        if general is None:
            continue  # a region without a numbering plan has no national format to read
        plan = _Plan(
            region,
            str(metadata.country_code),
            metadata.national_prefix or "",
            frozenset(general.possible_length or ()),
            re.compile(general.national_number_pattern or r"(?!)").fullmatch,
        )
        (trunk if plan.prefix else plain).append(plan)
    return tuple(trunk), tuple(plain), nanp


class PhoneDetector:
    """Phone numbers in international form, and in the national forms of ``regions``."""

    name = "phone"
    token = "[phone]"
    needs = HAS_9_DIGITS

    def __init__(self, regions: Iterable[str]) -> None:
        """``regions``: ISO 3166 codes whose national formats are recognised; an unknown one
        raises ``ValueError`` naming it."""
        self._trunk, self._plain, self._nanp = _plans(regions)
        self._plans = self._trunk + self._plain

    def __call__(self, text: str) -> str | None:
        def replace(match: re.Match[str]) -> str | None:
            candidate = match.group()
            found = self._find(candidate)
            if found is None:
                return None
            start, end = found
            return candidate[:start] + self.token + candidate[end:]

        return substitute(_PHONE, text, replace)

    def _find(self, candidate: str) -> tuple[int, int] | None:
        """The span of the longest phone number in ``candidate`` that starts and ends on
        its digit groups, or ``None``."""
        if _ISBN_SHAPE.fullmatch(candidate) and isbn.is_valid(candidate):
            return None  # "978-3-16-148410-0": a book, and none of its parts is a number
        groups = [m.span() for m in _DIGIT_RUN.finditer(candidate)]
        # No window may take part of a date: "01.01.2024 - 31.12.2024" holds no number.
        dates = [m.span() for m in _DATE.finditer(candidate)]
        count = len(groups)
        for size in range(min(count, _MAX_GROUPS), 0, -1):
            for first in range(count - size + 1):
                start, end = groups[first][0], groups[first + size - 1][1]
                if first == 0:
                    start = 0  # keep a leading "+" or "("
                if any(s < end and start < e for s, e in dates):
                    continue
                if self._is_phone(candidate[start:end]):
                    return start, end
        return None

    def _is_phone(self, text: str) -> bool:
        digits = _NON_DIGIT.sub("", text)
        if text[0] == "+" or text[:2] == "(+":
            return 8 <= len(digits) <= 15
        if text[:2] == "00":
            return 8 <= len(digits) - 2 <= 15 and digits[2] != "0"
        if "/" in text and not _AREA_SLASH.fullmatch(text):
            return False  # "/" only after an area code: "030/12345678", not "24/7"
        if not 9 <= len(digits) <= 15:
            return False
        if "." in text and _DOTTED_SINGLE.search(text):
            return False
        groups = _DIGIT_RUN.findall(text)
        trunk_zero = digits[0] == "0"
        # "36 38 40 42 44" is a list of sizes, "01 23 45 67 89" a French number.
        if len(groups) > 1 and all(len(g) == 2 for g in groups) and not trunk_zero:
            return False
        # Nine digits without a trunk 0 are Spanish or Portuguese numbers, written with
        # spaces; "123-456-789" or "2023.001.45" is a product or document code.
        if len(digits) == 9 and not trunk_zero and " " not in text:
            return False
        if self._nanp and _NANP.fullmatch(digits):
            return True
        for plan in self._trunk:
            if digits.startswith(plan.prefix):
                national = digits[len(plan.prefix):]
                if len(national) in plan.lengths and plan.pattern(national):
                    return True
        if len(digits) >= 11 and not trunk_zero:
            # An international number whose "+" was lost (a "+" in a query string reads as a
            # space): the country code of a configured region, then its plan.
            for plan in self._plans:
                national = digits[len(plan.code):]
                if (digits.startswith(plan.code) and len(national) in plan.lengths
                        and plan.pattern(national)):
                    return True
        if len(groups) > 1 or trunk_zero:
            for plan in self._plain:
                if len(digits) in plan.lengths and plan.pattern(digits):
                    number = phonenumbers.parse(digits, plan.region)
                    if phonenumbers.is_valid_number(number):
                        return True
        return False


# ---------------------------------------------------------------------------------------------
# Payment cards and IBANs

_CARD = re.compile(r"(?=\d)(?<![\d+])(?<!\d[ .\-])\d(?:[ .\-]?\d){12,22}(?!\d|[.,]\d)")


def _is_card(digits: str) -> bool:
    # ISO/IEC 7812 major industry identifiers 2-6 are the banking and payment ones (Visa 4,
    # Mastercard 2/5, Amex 3, Discover/UnionPay 6). Excluding 1 keeps 13-digit epoch-millisecond
    # timestamps, common in event parameters, from being taken for cards 10 % of the time.
    if not (13 <= len(digits) <= 19 and "2" <= digits[0] <= "6" and luhn.is_valid(digits)):
        return False
    # 13-digit cards are long retired; a 13-digit barcode (EAN) is a product, not a person.
    return not (len(digits) == 13 and ean.is_valid(digits))


def _confirm_card(candidate: str, token: str) -> str | None:
    digits = _NON_DIGIT.sub("", candidate)
    if _is_card(digits):
        return token
    # A card number followed by more digit groups (expiry, CVV, a second number): the longest
    # prefix at a group boundary that is a valid card is replaced, the rest kept.
    for end in separator_ends(candidate, " -."):
        if _is_card(_NON_DIGIT.sub("", candidate[:end])):
            return token + candidate[end:]
    return None


_IBAN = re.compile(
    r"(?=[A-Za-z])(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?:[ .\-]?[A-Za-z0-9]){11,30}(?![A-Za-z0-9])",
    re.ASCII,  # IBANs are ASCII
)


def _iban_valid(text: str) -> bool:
    # The mod-97 check alone: a country's BBAN format changes more often than the library.
    try:
        iban.validate(text, check_country=False)
    except ValueError:
        return False
    return True


def _confirm_iban(candidate: str, token: str) -> str | None:
    if _iban_valid(candidate):
        return token
    # The pattern also takes the words after an IBAN when they are alphanumeric ("... 00 is
    # mine"): try the longest prefix ending before a separator.
    for end in separator_ends(candidate, " .-"):
        if _iban_valid(candidate[:end]):
            return token + candidate[end:]
    return None


def card_detector() -> PatternDetector:
    return PatternDetector("card", "[card]", HAS_13_DIGITS, _CARD, _confirm_card)


def iban_detector() -> PatternDetector:
    return PatternDetector("iban", "[iban]", HAS_DIGIT, _IBAN, _confirm_iban)


# ---------------------------------------------------------------------------------------------
# National identity numbers

_NATIONAL_ID = re.compile(
    r"""
    (?<![A-Za-z0-9])
    (?:
        # A number named by its label ("SSN 536221234"): written bare, nine digits could be
        # anything, so without the label only the separated form counts.
        (?P<labelled>(?i:ssn|social\ security(?:\ number)?|sozialversicherungsnummer|bsn
                      |burgerservicenummer|steuer-?id|tax\ id|nino|nir|dni|nie|codice\ fiscale)
                     \W{0,3}(?:n[o°]\.?\W{0,2})?\d(?:[\ .\-]?\d){7,14}[A-Za-z]?)
      | (?P<ssn>\d{3}(?P<ssn_sep>[ -])\d{2}(?P=ssn_sep)\d{4})
      | (?P<nir>[12]\ ?\d{2}\ ?\d{2}\ ?(?:\d{2}|2[ABab])\ ?\d{3}\ ?\d{3}\ ?\d{2})
      | (?P<nino>[A-Z]{2}\ ?\d{2}\ ?\d{2}\ ?\d{2}\ ?[A-D])
      | (?P<idnr>\d{2}\ ?\d{3}\ ?\d{3}\ ?\d{3})
      | (?P<bsn>\d{4}\.?\d{2}\.?\d{3})
      | (?P<dni>\d{2}\.?\d{3}\.?\d{3}[\ -]?[A-Za-z])
      | (?P<nie>[XYZxyz]-?\d{7}-?[A-Za-z])
      | (?P<cf>[A-Za-z]{6}[0-9LMNP-Vlmnp-v]{2}[A-Za-z][0-9LMNP-Vlmnp-v]{2}[A-Za-z]
               [0-9LMNP-Vlmnp-v]{3}[A-Za-z])
    )
    (?![A-Za-z0-9])
    """,
    re.VERBOSE | re.ASCII,
)

_ID_SEPARATORS = re.compile(r"[ .\-]")
_ID_CHECKS: dict[str, Callable[[str], bool]] = {
    "labelled": lambda text: True,  # the label says what it is
    "ssn": ssn.is_valid,
    "nir": nir.is_valid,
    # NINOs have no check digit: the pattern is the whole rule. It takes every prefix, the
    # unallocated ones too ("QQ 12 34 56 C" is HMRC's own example, and what gets planted).
    "nino": lambda text: True,
    "idnr": idnr.is_valid,
    "bsn": bsn.is_valid,
    "dni": dni.is_valid,
    "nie": nie.is_valid,
    "cf": codicefiscale.is_valid,
}


def _confirm_national_id(match: re.Match[str]) -> bool:
    kind = next(k for k in _ID_CHECKS if match.group(k) is not None)
    check = _ID_CHECKS[kind]
    try:
        return bool(check(_ID_SEPARATORS.sub("", match.group(kind)).upper()))
    except Exception:  # a library's internal error on odd input: treat as a match
        return True


@dataclass(frozen=True, slots=True)
class _NationalIdDetector:
    name: str = "national_id"
    token: str = "[id]"
    # A NINO has 6 digits, a NIE 7, the rest 8 or more: the cheapest common need.
    needs: int = HAS_4_DIGITS

    def __call__(self, text: str) -> str | None:
        token = self.token
        return substitute(
            _NATIONAL_ID, text, lambda match: token if _confirm_national_id(match) else None
        )


def national_id_detector() -> _NationalIdDetector:
    return _NationalIdDetector()

