"""Personal values in free text, however they are written.

Used on every beacon for ``dt``, ``ep.*`` values, item fields and the parts of a URL that are
kept. Each kind of value is one *detector* behind the ``Detector`` signature
(``proxy/sanitize/detector.py``), registered by name in ``DETECTORS``: e-mail and IP
addresses here, numbers confirmed by libraries (phone, card, IBAN, national ids) in
``numbers.py``, secrets and base64 in ``secrets.py``.

``PiiScrubber.scrub`` reads the value through its normalised view (``normalize.view``:
decoded, NFKC, invisible characters removed, spelled-out ``@`` and ``.`` folded). Where a
detector fires, what leaves is the scrubbed view, each match replaced by a fixed token such
as ``[email]``; where none fires, the value leaves exactly as it came. The whole value is
scanned: callers truncate afterwards (``scrub_truncated``), so a cut never leaves half an
address behind.

Detectors are built once (their regexes compiled then); a call only scans. Before any regex
runs, the scrubber looks at cheap features of the text (how many digits, an ``@``, a ``:``)
and skips the detectors that cannot match. Nothing here logs, and no exception message
carries a scanned value.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType

from proxy.location.regions import expand_regions
from proxy.sanitize.detector import (
    HAS_4_DIGITS,
    HAS_AT,
    HAS_COLON,
    HAS_DIGIT,
    Detector,
    PatternDetector,
    features,
)
from proxy.sanitize.normalize import view
from proxy.sanitize.numbers import (
    PhoneDetector,
    card_detector,
    iban_detector,
    national_id_detector,
)
from proxy.sanitize.secrets import SecretDetector, base64_detector

__all__ = [
    "DEFAULT_DETECTORS",
    "DEFAULT_PHONE_REGIONS",
    "DETECTORS",
    "PiiScrubber",
    "contains_pii",
]

# Each changing pass removes at least one match, so the loop ends anyway; the cap only
# bounds the work on adversarial input (a second pass is needed when one value had hidden
# another, e.g. a phone number written right after a card number).
_MAX_PASSES = 4

# Where national phone formats are recognised when the configuration names none: the
# countries of the default consent regimes (EEA, GB, CH, US).
DEFAULT_PHONE_REGIONS = tuple(sorted(expand_regions(["EEA", "GB", "CH", "US"])))

_ANY_DIGIT = re.compile(r"\d").search

_EMAIL = re.compile(
    # The look-behind starts a candidate only at the beginning of a run of address characters,
    # which keeps the scan linear on long runs without an "@". "%40" is an encoded "@".
    r"(?<![\w.!#$%&'*+/=?^`{|}~-])[\w.!#$%&'*+/=?^`{|}~-]+(?:@|%40)"
    # Not a file named for its pixel density ("icon@2x.png", "logo@1.5x.webp").
    r"(?!\d+(?:\.\d+)?x\.[A-Za-z]{2,5}(?![\w.-]))"
    r"(?:[\w-]+\.)+[\w-]+"
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


def _confirm_ipv6(candidate: str, token: str) -> str | None:
    # "10:20:30" and "a::b" are candidates too; only a parseable address with a digit counts.
    if not _ANY_DIGIT(candidate):
        return None
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return None
    return token


_UK_POSTCODE = re.compile(
    r"(?=[A-PR-UWYZ])(?<![A-Za-z0-9])"
    r"[A-PR-UWYZ][A-HK-Y]?\d[A-Z\d]? ?\d[ABD-HJLNP-UW-Z]{2}"  # outward, inward code
    r"(?![A-Za-z0-9])",
    re.ASCII,
)

# name -> what builds it from the phone regions and the scrubber's own inner check.
DetectorFactory = Callable[[Sequence[str], Callable[[str], bool]], Detector]


def _fixed(detector: Detector) -> DetectorFactory:
    return lambda regions, inner: detector


DETECTORS: Mapping[str, DetectorFactory] = MappingProxyType({
    # Order matters and is fixed here, whatever order the configuration lists names in: an
    # e-mail's digits must not be taken for a phone number, an IBAN's for a card, a card's or
    # an address's for a phone number, a token's for anything.
    #
    # email: local@domain.tld on the normalised view; no bare "@handle" or "user@localhost".
    "email": _fixed(PatternDetector("email", "[email]", HAS_AT, _EMAIL)),
    # secret: JWTs, UUIDs, long hex, random-looking runs split or not (secrets.py).
    "secret": _fixed(SecretDetector()),
    # base64: a run that decodes to text in which another detector fires (secrets.py).
    "base64": lambda regions, inner: base64_detector(inner),
    # iban: replaced only if the mod-97 check passes (stdnum.iban).
    "iban": _fixed(iban_detector()),
    # card: 13-19 digits, industry 2-6, Luhn (stdnum.luhn), not an EAN-13 barcode.
    "card": _fixed(card_detector()),
    # national_id: SSN, NIR, NINO, Steuer-IdNr, BSN, DNI/NIE, codice fiscale (stdnum).
    "national_id": _fixed(national_id_detector()),
    # ipv6: anything ipaddress accepts as IPv6 with at least one digit (after a ":" scan).
    "ipv6": _fixed(PatternDetector("ipv6", "[ip]", HAS_DIGIT | HAS_COLON, _IPV6, _confirm_ipv6)),
    # ipv4: dotted quad with octets 0-255, not glued to a word or a longer number.
    "ipv4": _fixed(PatternDetector("ipv4", "[ip]", HAS_4_DIGITS, _IPV4)),
    # phone: libphonenumber's plans for the configured regions (numbers.py).
    "phone": lambda regions, inner: PhoneDetector(regions),
    # uk_postcode: full postcode ("SW1A 1AA"), upper case. Not in the default set: it also
    # matches product names ("G6 4GB"), and it locates a street, not a person.
    "uk_postcode": _fixed(
        PatternDetector("uk_postcode", "[postcode]", HAS_DIGIT, _UK_POSTCODE)
    ),
})

DEFAULT_DETECTORS: tuple[str, ...] = tuple(name for name in DETECTORS if name != "uk_postcode")


class PiiScrubber:
    """Replaces personal values in text with tokens; built once from detector names."""

    def __init__(
        self,
        detectors: Sequence[str] = DEFAULT_DETECTORS,
        phone_regions: Iterable[str] = DEFAULT_PHONE_REGIONS,
    ) -> None:
        """``detectors``: names from ``DETECTORS``; they run in the table's order, not the
        given one. ``phone_regions``: ISO 3166 codes whose national phone formats count.
        An unknown name or region raises ``ValueError`` naming it."""
        wanted = {detectors} if isinstance(detectors, str) else set(detectors)
        unknown = sorted(wanted - DETECTORS.keys())
        if unknown:
            raise ValueError(
                f"unknown PII detector(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(DETECTORS)}"
            )
        regions = tuple(phone_regions)
        self._detectors = tuple(
            factory(regions, self._fires_inner)
            for name, factory in DETECTORS.items()
            if name in wanted
        )
        # What a base64 run decodes to is scanned by the others (never base64 again).
        self._inner = tuple(d for d in self._detectors if d.name != "base64")
        self.phone_regions = regions

    @property
    def names(self) -> tuple[str, ...]:
        """The active detectors, in the order they run."""
        return tuple(detector.name for detector in self._detectors)

    def scrub(self, text: str) -> tuple[str, tuple[str, ...]]:
        """Return ``text`` with every detected value replaced, and the names of the detectors
        that fired. When none fired, the very same ``text`` object and ``()``; when one did,
        the scrubbed normalised view."""
        seen = view(text)
        out, fired = self._scan(seen, self._detectors)
        if not fired and seen is not text:
            # What leaves is the text as written, and "%00::" reads as an IPv6 address there
            # although its decoded view does not: the raw text must be clean too.
            out, fired = self._scan(text, self._detectors)
        if not fired:
            return text, ()
        return out, fired

    def scrub_truncated(self, text: str, limit: int) -> tuple[str, tuple[str, ...]]:
        """``scrub`` on the whole of ``text``, then cut to ``limit`` characters; a cut text
        is scanned again, since the start of a longer number can be a number itself."""
        out, fired = self.scrub(text)
        if len(out) <= limit:
            return out, fired
        out, more = self.scrub(out[:limit])
        if more:
            out = out[:limit]
            fired = tuple(dict.fromkeys((*fired, *more)))
        return out, fired

    def contains_pii(self, text: str) -> bool:
        """Whether any active detector fires on ``text``."""
        return bool(self.scrub(text)[1])

    def _fires_inner(self, text: str) -> bool:
        return bool(self._scan(view(text), self._inner)[1])

    @staticmethod
    def _scan(text: str, detectors: tuple[Detector, ...]) -> tuple[str, tuple[str, ...]]:
        present = features(text)
        fired: list[str] = []
        out = text
        for _ in range(_MAX_PASSES):
            changed = False
            for detector in detectors:
                if detector.needs & ~present:
                    continue
                new = detector(out)
                if new is not None:
                    out, changed = new, True
                    if detector.name not in fired:
                        fired.append(detector.name)
            if not changed:
                break
            present = features(out)
        return out, tuple(fired)


_DEFAULT_SCRUBBER = PiiScrubber()


def contains_pii(text: str) -> bool:
    """Whether the default detector set fires on ``text`` (for tests and reports)."""
    return _DEFAULT_SCRUBBER.contains_pii(text)
