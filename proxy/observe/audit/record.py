"""An audit record: what happened to a beacon, in codes and known names, never its values.

Every dropped beacon and a sample (``audit.sample``) of forwarded ones become one record:
the minute, the site's measurement id, the decision and its reason, the consent verdict with
the reading of every source that did not abstain (the others counted), the regime, the
location level sent, the number of events, and for sampled forwarded beacons each
parameter's name with what was done to it and by which rule.
Values never enter a record: ``Change.before``/``after`` are read by nobody here, and a
parameter *name* that the compiled policy does not know (``?jane@example.com=1``,
``ep.<anything not allow-listed>``) is counted under ``(other)``, never written out.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgspec

from proxy.config import Config
from proxy.consent.verdict import Verdict
from proxy.mp.fields import TRACE_NAMES as MP_TRACE_NAMES
from proxy.pipeline import Outcome
from proxy.sanitize.policy import Action, compile_policy
from proxy.sanitize.sanitizer import Change

Record = dict[str, Any]
# Records are kept encoded: one bytes object each is nothing for the cyclic garbage collector
# to scan, where a ring of dicts of dicts would slow every collection of the process.
encode_record = msgspec.json.Encoder().encode
decode_record = msgspec.json.Decoder().decode

OTHER = "(other)"  # stands for any name or code that is not known to be safe to write

# Written only when they match: a name as the policy spells them, a code as rules emit them.
_NAME = re.compile(r"[A-Za-z0-9_]{1,40}(\.[A-Za-z0-9_]{1,40})?")
_CODE = re.compile(r"[a-z0-9_-]{1,40}")
_SCOPE = re.compile(r"query|event \d{1,3}")


def known_names(config: Config) -> frozenset[str]:
    """Parameter names safe to write: those the compiled policy has a rule for (so
    ``ep.<name>`` only for allow-listed names), and only in the shape the policy uses."""
    policy = compile_policy(config.privacy, config.allowed_origins)
    names = (*policy.table, *policy.forced, *MP_TRACE_NAMES)  # and the Measurement Protocol's
    return frozenset(n for n in names if _NAME.fullmatch(n))


def query_tid(query: str) -> str | None:
    """The raw ``tid`` of a query string, found without parsing the rest."""
    start = 0
    while (at := query.find("tid=", start)) >= 0:
        if at == 0 or query[at - 1] == "&":
            end = query.find("&", at)
            return query[at + 4 : end if end >= 0 else None]
        start = at + 4
    return None


_ACTIONS = {action: action.value for action in Action}
MEMO_SIZE = 4096  # codes remembered as checked (rule names, reasons, scopes: a few hundred)


def _checked(memo: dict[str, str], pattern: re.Pattern[str], text: str | None) -> str | None:
    if not text:
        return None
    known = memo.get(text)
    if known is not None:
        return known
    if not pattern.fullmatch(text):
        return OTHER
    if len(memo) < MEMO_SIZE:
        memo[text] = text
    return text


class RecordBuilder:
    """Turns an ``Outcome`` into a record of codes and known names; compiled once. Built on
    the request path for every drop, so checks of codes are remembered, not repeated."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self._tids = frozenset(config.measurement_ids)
        self._names = known_names(config)
        self._clock = clock
        self._minute = -1
        self._minute_text = ""
        # Texts already found to be codes (never any other text: it could be anything).
        self._codes: dict[str, str] = {}
        self._scopes: dict[str, str] = {}

    def code(self, text: str | None) -> str | None:
        """``text`` when it is a code, else the placeholder; None for nothing."""
        return _checked(self._codes, _CODE, text)

    def scope(self, text: str) -> str:
        return _checked(self._scopes, _SCOPE, text) or OTHER

    def minute(self) -> str:
        minute = int(self._clock() // 60)
        if minute != self._minute:
            self._minute = minute
            self._minute_text = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(minute * 60))
        return self._minute_text

    def tid(self, query: str, parsed: str = "") -> str | None:
        """The pipeline's parsed tid when it got that far, else the raw query's."""
        tid = parsed or query_tid(query)
        if tid is None:
            return None
        # A measurement id names the site, not the visitor; anything else may be anything.
        return tid if tid in self._tids else OTHER

    def build(self, outcome: Outcome, query: str, decision: str) -> Record:
        code = self.code
        consent = outcome.consent
        readings = None
        if consent is not None:
            # Sources that abstained (most, on most beacons) are counted, not listed.
            said = {
                code(name) or OTHER: verdict.value
                for name, verdict in consent.verdicts
                if verdict is not Verdict.ABSTAIN
            }
            readings = {
                "source": code(consent.source),
                "verdict": code(consent.reason),
                "readings": said,
                "abstained": len(consent.verdicts) - len(said),
            }
        return {
            "minute": self.minute(),
            "tid": self.tid(query, outcome.tid),
            "decision": decision,
            "reason": code(outcome.reason),
            "detail": code(outcome.detail),
            "regime": outcome.regime.value if outcome.regime else None,
            "consent": readings,
            "location": code(outcome.location_level),
            "events": outcome.events,
            "params": self.params(outcome.changes, outcome.location_level)
            if outcome.changes
            else [],
        }

    def drop(self, reason: str, query: str) -> Record:
        """A beacon dropped by the server before the pipeline saw it (too large, error)."""
        return {
            "minute": self.minute(),
            "tid": self.tid(query),
            "decision": "dropped",
            "reason": self.code(reason),
            "detail": None,
            "regime": None,
            "consent": None,
            "location": None,
            "events": 0,
            "params": [],
        }

    def params(self, changes: Iterable[Change], location: str = "") -> list[dict[str, Any]]:
        code, names = self.code, self._names
        out: list[dict[str, Any]] = []
        others: dict[tuple[str, str, str], int] = {}
        for change in changes:
            scope = self.scope(change.scope)
            action, rule = _ACTIONS[change.action], code(change.rule) or OTHER
            if change.param in names:
                detail = [d for d in change.detail if code(d) == d] if change.detail else []
                if change.param == "_uip" and location and code(location) == location:
                    detail.append(location)  # the level the address was generalised to
                out.append(
                    {"scope": scope, "name": change.param, "action": action, "rule": rule,
                     "detail": detail, "count": 1}
                )
            else:
                key = (scope, action, rule)
                others[key] = others.get(key, 0) + 1
        for (scope, action, rule), count in others.items():
            out.append(
                {"scope": scope, "name": OTHER, "action": action, "rule": rule, "detail": [],
                 "count": count}
            )
        return out



def decode_entries(rows: Any) -> Iterator[Record]:
    """Stream entries (id, fields) as records with their ids; foreign entries are skipped."""
    for entry_id, fields in rows or ():
        raw: Any = (fields or {}).get(b"r")
        try:
            record = decode_record(raw)
        except (TypeError, msgspec.DecodeError):
            continue  # not one of ours
        if isinstance(record, dict):
            record["id"] = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            yield record
