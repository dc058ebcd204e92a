r"""The normalised view of a value, which the personal-data detectors read.

A visitor's browser, a site's tagging or an adversary can write the same e-mail address in
many ways: ``zelda%252540example.org`` (encoded three times), ``zelda&#64;example.org``,
``zelda\uff20example\uff0eorg`` (fullwidth), ``zel\u200bda@example.org`` (a zero-width
space inside), ``zelda [at] example [dot] org``, digits from another script. ``view``
undoes all of these so that one detector per kind of value sees one spelling:

1. percent-decoding and HTML entities, repeated until stable (bounded: ``MAX_DECODE_ROUNDS``);
2. Unicode NFKC (fullwidth and compatibility forms: ``\uff20`` → ``@``, no-break space → space);
3. format characters removed (zero-width, soft hyphen, bidi controls, word joiner, BOM);
4. decimal digits of every script folded to ASCII, dashes to ``-``, ideographic stops to ``.``;
5. spelled-out ``@`` and ``.`` folded where they stand in an address's shape
   (``name [at] domain [dot] org``, ``name at domain.org``), and spaces around ``@`` removed.

The view is for detection only: where a detector fires on it, the scrubber forwards the
scrubbed view, never the original spelling; where none fires, the original value leaves as it
came. Plain ASCII without ``%``, ``&`` or a spelled-out marker is its own view (one cheap
check, no copy): what gtag sends is nearly all of that kind.
"""

from __future__ import annotations

import html
import re
import sys
import unicodedata
from urllib.parse import unquote

__all__ = ["MAX_DECODE_ROUNDS", "view"]

# Encoded more than this many times, the value is decoded this far: no browser or tag does
# more than two, and the bound keeps the work on crafted input linear.
MAX_DECODE_ROUNDS = 6


def _fold_table() -> dict[int, str | None]:
    table: dict[int, str | None] = {}
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        category = unicodedata.category(char)
        if category == "Cf":  # zero-width, soft hyphen, bidi controls, joiners, BOM
            table[code] = None
        elif category == "Nd" and code > 0x7F:
            table[code] = str(unicodedata.decimal(char))
        elif category == "Pd" and code > 0x7F:  # hyphens and dashes of every kind
            table[code] = "-"
    # Stops that NFKC leaves alone, and the minus sign (Sm).
    table.update({0x3002: ".", 0xFF61: ".", 0x2212: "-", 0x00A0: " ", 0x202F: " "})
    return table


_FOLD = _fold_table()

# Where an address may be spelled out: an "@", or "at"/"dot" between spaces or brackets (any
# case). Explicit classes rather than IGNORECASE and \b: this runs on most values, and is
# twice as fast this way.
_SPELLED_MARK = r"@|[\s\[\(\{<](?:[aA][tT]|[dD][oO][tT])[\s\]\)\}>]"
# An ASCII value that needs no work: no escape, no entity, nothing spelled out.
_ASCII_SUSPECT = re.compile(rf"[%&]|{_SPELLED_MARK}")
_MAY_BE_SPELLED = re.compile(_SPELLED_MARK)

_AT_WORD = r"(?:\s*[\[\(\{<]\s*at\s*[\]\)\}>]\s*|\s+at\s+|\s*@\s*)"
_DOT_WORD = r"(?:\s*[\[\(\{<]\s*dot\s*[\]\)\}>]\s*|\s+dot\s+|\.)"
_LABEL = r"[\w-]+"
# local-part, spelled or symbolic "@", then a domain of two or more labels whose separators
# are spelled or symbolic dots. Only this shape is folded: "meet us at the studio" is not.
_LOCAL = r"[\w.!#$%&'*+/=?^`{|}~-]"
_SPELLED_ADDRESS = re.compile(
    # Starts only where a run of address characters starts: linear on long runs.
    rf"(?<!{_LOCAL})({_LOCAL}+(?:{_DOT_WORD}{_LOCAL}+)*){_AT_WORD}({_LABEL}(?:{_DOT_WORD}{_LABEL})+)",
    re.IGNORECASE,
)
_DOT_SPLIT = re.compile(_DOT_WORD, re.IGNORECASE)


def _fold_address(match: re.Match[str]) -> str:
    local, domain = match.group(1), match.group(2)
    labels = _DOT_SPLIT.split(domain)
    if not labels[-1].isalpha() or len(labels[-1]) < 2:
        return match.group()  # no top-level domain: "at 10.30" is a time, not an address
    return f"{'.'.join(_DOT_SPLIT.split(local))}@{'.'.join(labels)}"


def _decode(text: str) -> str:
    for _ in range(MAX_DECODE_ROUNDS):
        decoded = text
        if "%" in decoded:
            decoded = unquote(decoded)
        if "&" in decoded:
            decoded = html.unescape(decoded)
        if decoded == text:
            break
        text = decoded
    return text


def view(text: str) -> str:
    """The normalised view of ``text``; ``text`` itself when it needs no normalising."""
    if text.isascii() and not _ASCII_SUSPECT.search(text):
        return text
    out = _decode(text)
    if not out.isascii():
        out = unicodedata.normalize("NFKC", out).translate(_FOLD)
        # NFKC can make new escapes or entities (fullwidth "%40" is "%40"): decode once more.
        if "%" in out or "&" in out:
            out = _decode(out)
    if _MAY_BE_SPELLED.search(out):
        out = _SPELLED_ADDRESS.sub(_fold_address, out)
    return text if out == text else out  # the same object: nothing to scan twice
