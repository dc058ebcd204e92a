"""The shape every personal-data detector shares, and the cheap text features that let the
scrubber skip the detectors a text cannot trigger.

A detector is a callable behind ``Detector``: text in, the text with every match replaced by
a fixed token out (``None`` when nothing matched). Most are a ``PatternDetector``: a regex
that finds candidates and a check (Luhn, mod 97, a national number's check digits, a phone
number's plan) that confirms each one before it is replaced.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "HAS_4_DIGITS",
    "HAS_9_DIGITS",
    "HAS_13_DIGITS",
    "HAS_AT",
    "HAS_COLON",
    "HAS_DIGIT",
    "Confirm",
    "Detector",
    "PatternDetector",
    "features",
    "separator_ends",
    "substitute",
]

# Features of a text, computed once per scan: a detector names the ones a match needs and is
# skipped when the text lacks one. Most titles with digits have a handful ("iPhone 15 Pro 128
# GB"), too few for a phone, card or identity number. Plain ints, not enum.Flag: per call.
HAS_DIGIT = 1
HAS_AT = 2
HAS_COLON = 4
HAS_4_DIGITS = 8
HAS_9_DIGITS = 16
HAS_13_DIGITS = 32

_ANY_DIGIT = re.compile(r"\d").search
_ALL_DIGITS = re.compile(r"\d").findall


def features(text: str) -> int:
    """The ``HAS_*`` features present in ``text``."""
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
Confirm = Callable[[str, str], "str | None"]


@dataclass(frozen=True, slots=True)
class PatternDetector:
    """A regex that finds candidates, and optionally a check that confirms each one."""

    name: str
    token: str
    needs: int
    pattern: re.Pattern[str]
    confirm: Confirm | None = None

    def __call__(self, text: str) -> str | None:
        if self.confirm is None:
            out, count = self.pattern.subn(self.token, text)
            return out if count else None
        confirm, token = self.confirm, self.token
        return substitute(self.pattern, text, lambda match: confirm(match.group(), token))


def substitute(
    pattern: re.Pattern[str], text: str, replacement: Callable[[re.Match[str]], str | None]
) -> str | None:
    """``text`` with each match of ``pattern`` replaced by what ``replacement`` returns for
    it (``None``: left as it is), or ``None`` when nothing was replaced."""
    if pattern.search(text) is None:
        return None  # the usual case, without building the closure below
    hits = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal hits
        new = replacement(match)
        if new is None:
            return match.group()
        hits += 1
        return new

    out = pattern.sub(replace, text)
    return out if hits else None


def separator_ends(candidate: str, separators: str) -> Iterable[int]:
    """Positions where a shorter candidate could end (before a separator), longest first."""
    return (i for i in range(len(candidate) - 1, 0, -1) if candidate[i] in separators)
