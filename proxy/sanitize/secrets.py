"""Secrets and encoded values: tokens that open an account or name a record, and base64 that
hides a personal value from the other detectors.

- ``secret``: a JWT (``eyJ….eyJ….…``); a UUID; a hex run of 24 or more; a run of 16 or more
  letters and digits, whole or split by ``-``/``_`` into short parts, that reads as random:
  it changes between letters and digits or from lower to upper case at least once every four
  characters, and is not made of words (under a third of it in lower-case runs of three
  letters or more). ``summer_sale_2024``, ``samsung-galaxy-s24-ultra-512gb`` and
  ``MacBookPro16M3Max`` are words; ``zQ8v-Kp3L_9xTq-Ab2D`` is not.
- ``base64``: a base64 or base64url run of 12 or more characters, with both cases, that
  decodes to UTF-8 text in which another detector fires (an e-mail address, a phone number).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass

from proxy.sanitize.detector import HAS_DIGIT, substitute

__all__ = ["SecretDetector", "base64_detector", "has_random_run", "is_random"]

_JWT = r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"
_UUID = r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}"
_HEX = r"[0-9A-Fa-f]{24,}"
_RUN = r"[A-Za-z0-9](?:[-_]?[A-Za-z0-9]){15,}"
_SECRET = re.compile(
    rf"(?<![A-Za-z0-9_-])(?:(?P<certain>{_JWT}|{_UUID}|{_HEX})|(?P<run>{_RUN}))"
    r"(?![A-Za-z0-9_-])",
    re.ASCII,
)
_WORDY = re.compile(r"[a-z]{3,}")
MIN_TOKEN = 16


def is_random(run: str) -> bool:
    """Whether a run of letters and digits (``-``/``_`` ignored) reads as a random token."""
    chars = run.replace("-", "").replace("_", "")
    if len(chars) < MIN_TOKEN or chars.isalpha() or chars.isdigit():
        return False
    changes = 0
    previous = chars[0]
    for char in chars[1:]:
        if previous.isdigit() != char.isdigit() or (previous.islower() and char.isupper()):
            changes += 1
        previous = char
    if changes * 4 < len(chars):
        return False
    wordy = sum(len(m) for m in _WORDY.findall(chars))
    return wordy * 3 < len(chars)


_RUNS = re.compile(rf"(?<![A-Za-z0-9_-]){_RUN}(?![A-Za-z0-9_-])", re.ASCII)


def has_random_run(text: str) -> bool:
    """Whether ``text`` holds a run that ``is_random`` takes for a token."""
    return any(is_random(run) for run in _RUNS.findall(text))


@dataclass(frozen=True, slots=True)
class SecretDetector:
    name: str = "secret"
    token: str = "[secret]"
    needs: int = HAS_DIGIT  # every shape above holds a digit, bar a rare all-letter token

    def __call__(self, text: str) -> str | None:
        def replace(match: re.Match[str]) -> str | None:
            if match.group("certain") is None and not is_random(match.group("run")):
                return None
            return self.token

        return substitute(_SECRET, text, replace)


_BASE64 = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{12,}={0,2}", re.ASCII)


def _decoded(run: str) -> str | None:
    data = run.rstrip("=")
    padded = data + "=" * (-len(data) % 4)
    altchars = b"-_" if ("-" in data or "_" in data) else None
    try:
        raw = base64.b64decode(padded, altchars=altchars, validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    return text if text.isprintable() else None


@dataclass(frozen=True, slots=True)
class _Base64Detector:
    inner: Callable[[str], bool]  # whether another detector fires on the decoded text
    name: str = "base64"
    token: str = "[encoded]"
    needs: int = 0

    def __call__(self, text: str) -> str | None:
        def replace(match: re.Match[str]) -> str | None:
            run = match.group()
            if run.islower() or run.isupper() or run.isdigit():
                return None  # base64 of text has both cases; words and numbers have not
            # "/" is base64's and a path's: the run whole, else each part between slashes.
            parts = [run, *run.split("/")] if "/" in run else [run]
            for part in parts:
                decoded = _decoded(part) if len(part) >= 12 else None
                if decoded is not None and self.inner(decoded):
                    return run.replace(part, self.token)
            return None

        return substitute(_BASE64, text, replace)


def base64_detector(inner: Callable[[str], bool]) -> _Base64Detector:
    """``inner``: the other detectors, run on what a base64 run decodes to."""
    return _Base64Detector(inner)
