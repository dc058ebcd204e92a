"""What every consent source returns, and what it reads."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from proxy.ingest.cookies import CookieJar


class Verdict(enum.Enum):
    """One source's reading of analytics consent (consent-signals.md §1)."""

    GRANT = "grant"
    DENY = "deny"
    IMPLIED = "implied"  # "granted" without a user action, e.g. an opt-out-region default
    ABSTAIN = "abstain"  # absent, undecodable, stale or not configured


@dataclass(frozen=True, slots=True)
class ConsentInput:
    """Everything a source may look at for one request. Never logged."""

    cookies: CookieJar
    # Effective parameters of each event (query overlaid with the event's body line).
    events: Sequence[Mapping[str, str]]
    now: float  # epoch seconds, for sources whose cookies carry an expiry


# A compiled source: options are validated and pre-processed once, the call only reads.
ConsentSource = Callable[[ConsentInput], Verdict]
