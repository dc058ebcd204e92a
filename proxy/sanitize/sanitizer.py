"""Applies the compiled ``Policy`` to a parsed ``Beacon``, keeping the batch shape, and
counts what each rule did (``ParameterCounts``) for the metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from proxy.beacon import Beacon, Params
from proxy.policy import (
    DROP_IDENTIFIER,
    DROP_NOT_ALLOW_LISTED,
    DROP_UNKNOWN,
    Action,
    EventContext,
    Policy,
)
from proxy.sanitize.urls import UrlScrubber

_KEEP = object()
_DROP = object()
# What the metrics count per rule: what was changed. Kept parameters (most of every beacon)
# and the proxy's own forced ones (on every beacon) are not counted.
COUNTED = frozenset((Action.DROPPED, Action.REPLACED, Action.SCRUBBED, Action.GENERALISED))
FALLBACK_RULES = (DROP_UNKNOWN, DROP_IDENTIFIER, DROP_NOT_ALLOW_LISTED)
# Names outside the table (a site's own ep.* parameters, mostly) whose count slot is
# remembered: a few per site in practice; bounded, since the names come from requests.
UNLISTED_CACHE = 1024
UNLISTED_NAME_MAX = 64


@dataclass(frozen=True, slots=True)
class Change:
    """One parameter's fate, for ``explain`` and the audit trail.

    ``before``/``after`` hold values and exist only for ``explain`` on the operator's own
    input; the audit trail keeps ``param``, ``action``, ``rule`` and ``detail`` only.
    """

    scope: str  # "query" or "event N" (1-based body line)
    param: str
    action: Action
    rule: str
    before: str | None
    after: str | None
    detail: tuple[str, ...] = ()


class ParameterCounts:
    """How many parameters each rule dropped, replaced, scrubbed or generalised, as plain
    integers in a list indexed by a slot fixed at start-up. A Prometheus counter per parameter
    would cost more than most rules; ``Metrics.refresh`` moves these counts once a second."""

    __slots__ = ("_slots", "counts", "labels")

    def __init__(self) -> None:
        # Slot 0 collects what is not counted (kept), so the hot path never branches on it.
        self.labels: list[tuple[str, str]] = [("", "")]
        self.counts: list[int] = [0]
        self._slots: dict[tuple[str, Action], int] = {}

    def slot(self, rule: str, action: Action) -> int:
        """The slot of ``(rule, action)``: made at compile time, looked up when tracing."""
        if action not in COUNTED:
            return 0
        slot = self._slots.get((rule, action))
        if slot is None:
            slot = self._slots[(rule, action)] = len(self.counts)
            self.labels.append((rule, action.value))
            self.counts.append(0)
        return slot

    def take(self) -> list[tuple[tuple[str, str], int]]:
        """``((rule, action), count)`` for every count since the last call, which resets
        them. Nothing awaits in between, so no increment is lost on the event loop."""
        counts = self.counts
        taken = [(self.labels[i], n) for i, n in enumerate(counts) if n and i]
        for i in range(len(counts)):
            counts[i] = 0
        return taken


@dataclass(frozen=True, slots=True)
class Sanitized:
    shared: Params
    lines: list[Params]
    changes: tuple[Change, ...]


class Sanitizer:
    """``sanitize`` reads only the compiled table; its one state is what it counted."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._forced = tuple(policy.forced.items())
        # name -> rule function, or the _KEEP/_DROP markers; unknown names are absent (drop).
        self._fns: dict[str, object] = {
            name: (rule.fn or (_KEEP if rule.action is Action.KEPT else _DROP))
            for name, rule in policy.table.items()
        }
        # The count slots of each name: when dropped, and when a rule function changed it
        # (a validating rule that rewrites a value generalises it, as the trace says).
        self._counts = counts = ParameterCounts()
        self._dropped = {
            name: counts.slot(rule.name, Action.DROPPED)
            for name, rule in policy.table.items()
            if rule.fn is not None or rule.action is not Action.KEPT
        }
        self._changed = {
            name: counts.slot(
                rule.name, Action.GENERALISED if rule.action is Action.DROPPED else rule.action
            )
            for name, rule in policy.table.items()
            if rule.fn is not None
        }
        self._fallback = {r.name: counts.slot(r.name, Action.DROPPED) for r in FALLBACK_RULES}
        self._room = UNLISTED_CACHE  # names outside the table that may still be remembered

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def counts(self) -> ParameterCounts:
        """What this sanitiser did to parameters, by rule and action, on both paths."""
        return self._counts

    def sanitize(
        self,
        beacon: Beacon,
        pseudonymize: Callable[[str], str],
        extra: Params | None = None,
        *,
        trace: bool = False,
    ) -> Sanitized:
        """``extra``: request-level values the proxy itself sets (location, traffic type)."""
        changes: list[Change] | None = [] if trace else None
        page_host = UrlScrubber.host(beacon.shared.get("dl", ""))
        ctx = EventContext(page_host, pseudonymize)
        shared = self._params(beacon.shared, ctx, "query", changes)
        for name, value in (*self._forced, *(extra or {}).items()):
            if changes is not None and beacon.shared.get(name) != value:
                changes.append(
                    Change(
                        "query", name, Action.FORCED, "proxy_set", beacon.shared.get(name), value
                    )
                )
            shared[name] = value
        lines = []
        for index, line in enumerate(beacon.lines, 1):
            line_host = UrlScrubber.host(line["dl"]) if "dl" in line else page_host
            ctx = EventContext(line_host, pseudonymize)
            lines.append(self._params(line, ctx, f"event {index}", changes))
        return Sanitized(shared, lines, tuple(changes or ()))

    def _params(
        self, params: Params, ctx: EventContext, scope: str, changes: list[Change] | None
    ) -> Params:
        if changes is None:
            return self._params_fast(params, ctx)
        rule_of = self._policy.rule
        counts, slot = self._counts.counts, self._counts.slot
        out: Params = {}
        for name, value in params.items():
            rule = rule_of(name)
            fn = rule.fn
            if fn is None:
                kept = rule.action is Action.KEPT
                if kept:
                    out[name] = value
                else:
                    counts[slot(rule.name, Action.DROPPED)] += 1
                if changes is not None:
                    changes.append(
                        Change(
                            scope,
                            name,
                            rule.action if kept else Action.DROPPED,
                            rule.name,
                            value,
                            value if kept else None,
                        )
                    )
                continue
            if changes is not None:
                ctx.notes = []
            new = fn(value, ctx)
            if new is not None:
                out[name] = new
            if changes is not None:
                if new == value:
                    action = Action.KEPT
                elif new is None:
                    action = Action.DROPPED
                else:
                    # A validating rule (DROPPED when invalid) that rewrote the value.
                    action = Action.GENERALISED if rule.action is Action.DROPPED else rule.action
                counts[slot(rule.name, action)] += 1
                changes.append(
                    Change(
                        scope,
                        name,
                        action,
                        rule.name,
                        value,
                        new,
                        tuple(dict.fromkeys(ctx.notes or ())),
                    )
                )
        return out

    def _params_fast(self, params: Params, ctx: EventContext) -> Params:
        # The serving path: the same table as _params, without the trace bookkeeping. Only
        # what changes is counted, by an integer add to a precompiled slot.
        fns, dropped, counts = self._fns, self._dropped, self._counts.counts
        out: Params = {}
        for name, value in params.items():
            fn = fns.get(name, _DROP)
            if fn is _KEEP:
                out[name] = value
            elif fn is _DROP:
                counts[dropped.get(name) or self._unlisted(name)] += 1
            else:
                new = fn(value, ctx)  # type: ignore[operator]
                if new is None:
                    counts[dropped[name]] += 1
                else:
                    out[name] = new
                    if new != value:
                        counts[self._changed[name]] += 1
        return out

    def _unlisted(self, name: str) -> int:
        # Absent from the table: dropped as unknown, identifier or not allow-listed.
        slot = self._fallback[self._policy.rule(name).name]
        if self._room and len(name) <= UNLISTED_NAME_MAX:
            self._room -= 1
            self._dropped[name] = slot
        return slot
