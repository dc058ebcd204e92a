"""What every consent source shares: merging copies, all-of rules, JSON cookie values.

Kept to the few rules that must be identical across sources (consent-signals.md §1 and §2), so a
CMP module holds only the knowledge of its own cookie.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, TypeGuard

import msgspec

from proxy.consent.verdict import Verdict
from proxy.ingest.cookies import unquote_twice

# Option types: an empty name or an empty list would make an all-of rule vacuously true.
Name = Annotated[str, msgspec.Meta(min_length=1)]
Names = Annotated[tuple[Name, ...], msgspec.Meta(min_length=1)]


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """Merge the verdicts of several copies or events: DENY, then GRANT, then IMPLIED win."""
    found = set(verdicts)
    for verdict in (Verdict.DENY, Verdict.GRANT, Verdict.IMPLIED):
        if verdict in found:
            return verdict
    return Verdict.ABSTAIN


def all_of(states: Iterable[bool | None]) -> Verdict:
    """One state per configured category: any refusal denies, only all acceptances grant.

    ``None`` means the category is not in the cookie, which is no evidence either way.
    """
    seen = list(states)
    if False in seen:
        return Verdict.DENY
    if seen and all(state is True for state in seen):
        return Verdict.GRANT
    return Verdict.ABSTAIN


def require(source: str, option: str, value: str | tuple[str, ...]) -> None:
    """Fail at start-up, naming the option, when a name or list option is empty."""
    items = (value,) if isinstance(value, str) else value
    if not items or not all(items):
        raise ValueError(f"consent source {source!r}: option {option!r} must not be empty")


def decode_json_object(text: str | bytes) -> dict[str, Any] | None:
    """A JSON object, or None for anything else (malformed, too deep, not an object)."""
    try:
        decoded = msgspec.json.decode(text)
    except (msgspec.DecodeError, UnicodeError, RecursionError):  # deep nesting raises the last
        return None
    return decoded if isinstance(decoded, dict) else None


def json_cookie(raw: str) -> dict[str, Any] | None:
    """Decode a cookie holding JSON sent raw or percent-encoded once or twice.

    Raw JSON is tried as sent first: unquoting it would corrupt any ``%`` inside its strings.
    """
    text = raw.strip()
    if text.startswith("{"):
        decoded = decode_json_object(text)
        if decoded is not None:
            return decoded
    return decode_json_object(unquote_twice(text).strip())


def is_number(value: object) -> TypeGuard[int | float]:
    """A JSON number; ``bool`` is an ``int`` subclass in Python but never a number here."""
    return isinstance(value, int | float) and not isinstance(value, bool)
