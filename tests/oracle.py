"""An independent judge of what reached Google: does a planted value survive, in any form?

It knows nothing of the proxy's scrubber and never calls it. It reads the forwarded request
the way a determined reader could: undo every layer of percent-encoding and HTML entities,
fold Unicode look-alikes (fullwidth and small commercial at, fullwidth digits), drop invisible
characters and case, then drop every separator. A needle (a distinctive fragment of the
planted value, normalised the same way) found in what is left is a leak.

Dropping separators means ``4111 1111.1111-1111``, ``4111~1111~1111~1111`` and
``zelda.quux%252540example.org`` all still contain their needles; it also means needles must
be distinctive enough not to occur by chance in a concatenation of the rest of a request.
"""

from __future__ import annotations

import html
import re
import unicodedata
from urllib.parse import unquote_plus

# Enough for the deepest layering a beacon plausibly carries (the corpus plants three).
MAX_DECODE_ROUNDS = 6
# Soft hyphen, Arabic letter mark, Mongolian vowel separator, zero-width space/non-joiner/
# joiner, LRM/RLM, bidi embeddings and isolates, word joiner and invisible operators, BOM.
_INVISIBLE = re.compile("[\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]")


def normalise(text: str) -> str:
    """The letters and digits a reader recovers from ``text``, case-folded, in order."""
    for _ in range(MAX_DECODE_ROUNDS):
        decoded = html.unescape(unquote_plus(text))
        if decoded == text:
            break
        text = decoded
    text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text)).casefold()
    return "".join(ch for ch in text if ch.isalnum())


def finds(haystack: str, needle: str) -> bool:
    """Whether ``needle`` survives in ``haystack`` after both are normalised."""
    wanted = normalise(needle)
    if not wanted:
        raise ValueError(f"needle {needle!r} normalises to nothing")
    return wanted in normalise(haystack)


def found_needles(haystack: str, needles: list[str]) -> list[str]:
    """The needles that survive in ``haystack`` (normalised once, searched many times)."""
    text = normalise(haystack)
    return [n for n in needles if normalise(n) in text]
