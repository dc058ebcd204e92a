"""Google Consent Mode: the ``gcs`` and ``gcd`` parameters gtag puts on each event (§3).

``gcd`` decides whenever its analytics letter decodes, because ``gcs`` shows only the effective
state: a site whose *default* is "granted" sends ``G1x1`` without any user choice. A denial
wins from either parameter, though: ``gcs=G1x0`` beside a ``gcd`` whose letter reads "not set"
(or even "granted") is advanced Consent Mode's cookieless ping, never a consent.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from proxy.consent.reading import combine
from proxy.consent.verdict import ConsentInput, ConsentSource, Verdict

GCD_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_"
GCD_ANALYTICS_INDEX = 4  # "1" + (separator, letter) pairs: ad_storage, analytics_storage, ...

_UNSET, _DENIED, _GRANTED = 1, 2, 3
_GCD_VALUES = {char: index for index, char in enumerate(GCD_ALPHABET)}
_GCS_VERDICTS = {"1": Verdict.GRANT, "0": Verdict.DENY, "-": Verdict.ABSTAIN}


class ConsentModeOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                         tag_field="type", tag="consent_mode"):
    pass


def gcd_letter_verdict(letter: str) -> Verdict | None:
    """Decode one ``gcd`` letter by its bits; None when it is not a consent state at all.

    Decoding by bits rather than by the known letters keeps unseen letters readable.
    """
    value = _GCD_VALUES.get(letter)
    if value is None:
        return None
    update, default = value & 0b11, (value >> 2) & 0b11
    if update == 0 or default == 0:
        return None
    if update == _GRANTED:
        return Verdict.GRANT
    if update == _DENIED:
        return Verdict.DENY
    if default == _GRANTED:
        return Verdict.IMPLIED
    if default == _DENIED:
        return Verdict.DENY
    return Verdict.ABSTAIN


def event_verdict(params: Mapping[str, str]) -> Verdict:
    """One event's analytics consent from its effective parameters."""
    from_gcd = None
    gcd = params.get("gcd")
    if gcd is not None and len(gcd) > GCD_ANALYTICS_INDEX:
        from_gcd = gcd_letter_verdict(gcd[GCD_ANALYTICS_INDEX])
    from_gcs = None
    gcs = params.get("gcs")
    if gcs is not None and len(gcs) >= 4 and gcs.startswith("G1"):
        from_gcs = _GCS_VERDICTS.get(gcs[3], Verdict.ABSTAIN)
    if Verdict.DENY in (from_gcd, from_gcs):
        return Verdict.DENY
    if from_gcd is not None:
        return from_gcd
    return from_gcs if from_gcs is not None else Verdict.ABSTAIN


def compile_source(options: ConsentModeOptions) -> ConsentSource:
    def consent_mode(inp: ConsentInput) -> Verdict:
        events = inp.events
        if len(events) == 1:  # combine() of one verdict is that verdict
            return event_verdict(events[0])
        return combine(event_verdict(params) for params in events)

    return consent_mode
