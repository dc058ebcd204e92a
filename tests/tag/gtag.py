"""Google's real gtag.js, read from ``../shared/fixtures/gtag/`` beside the repository.

It is Google's code: never copied into the repository or the package. Where ``shared/`` is
absent and ``CI`` is unset (a developer's checkout elsewhere) the tests that need it skip
with that reason; in CI its absence is a failure.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GTAG_DIR = ROOT.parent / "shared" / "fixtures" / "gtag"
GTAG_ID = "G-69XYTDF1T2"
GTAG_FILE = GTAG_DIR / f"gtag-{GTAG_ID}.js"


@cache
def _read() -> str | None:
    try:
        return GTAG_FILE.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def gtag_js() -> str:
    """The fixture's text; fails in CI, skips elsewhere, when ``shared/`` is not there."""
    text = _read()
    if text is None:
        message = f"Google's gtag.js fixture not found at {GTAG_FILE} (../shared/ missing)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return text
