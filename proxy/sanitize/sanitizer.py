"""Applies the compiled ``Policy`` to a parsed ``Beacon``, keeping the batch shape, and
counts what each rule did (``ParameterCounts``) for the metrics."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from proxy.ingest.beacon import Beacon, Params, encode_value
from proxy.sanitize.policy import (
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
# Values a pure rule left unchanged, remembered per rule with their encoding (a site's page
# URLs, titles and referrers recur on most beacons): each memory holds at most MEMO_SIZE
# values of at most MEMO_VALUE_MAX characters, and starts afresh when full. Only values that
# were forwarded as they are: nothing is held that Google does not receive.
MEMO_SIZE = 4096
MEMO_VALUE_MAX = 512
# The serving path's flat table: name -> (kind, function, drop slot, change slot, memory).
_KEEP_RAW, _DROP_ALL, _SHAPE, _CALL, _MEMO, _MEMO_HOST = range(6)
Entry = tuple[int, Callable[..., object] | None, int, int, dict[object, str] | None]


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
    # The serving path's encoding of shared and lines, made as the values were judged:
    # exactly ``encode_sanitised(shared)`` and the lines' joined by "\n". None: not made
    # (tracing), encode the dicts.
    query: str | None = None
    body: str | None = None


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
        # Clean values' encoded forms -> the values (what parse would decode them to).
        self._decoded: dict[str, str] = {}
        # The serving path's table: one lookup per parameter gives everything it needs.
        memos: dict[int, dict[object, str]] = {}
        self._entries: dict[str, Entry] = {}
        for name, rule in policy.table.items():
            drop, change = self._dropped.get(name, 0), self._changed.get(name, 0)
            if rule.fn is None:
                kind = _KEEP_RAW if rule.action is Action.KEPT else _DROP_ALL
                self._entries[name] = (kind, None, drop, change, None)
            elif rule.plain is not None:
                # Its memory: raw values in shape, each with its "name=value" part.
                self._entries[name] = (_SHAPE, rule.plain, drop, change, {})
            elif rule.memo:
                memo = memos.setdefault(id(rule.fn), {})
                kind = _MEMO if rule.memo == 1 else _MEMO_HOST
                self._entries[name] = (kind, rule.fn, drop, change, memo)
            else:
                self._entries[name] = (_CALL, rule.fn, drop, change, None)

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def decoded(self) -> Mapping[str, str]:
        """Encoded forms of values this sanitiser forwarded unchanged, each to its value:
        what ``parse`` would decode them to (``parse(..., decoded=...)``)."""
        return self._decoded

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
        if not trace:
            return self._sanitize_fast(beacon, pseudonymize, extra)
        changes: list[Change] | None = []
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

    def _sanitize_fast(
        self, beacon: Beacon, pseudonymize: Callable[[str], str], extra: Params | None
    ) -> Sanitized:
        """``sanitize`` untraced: the same table, read through the flat one, encoding each
        value as it is judged."""
        page_host = UrlScrubber.host(beacon.shared.get("dl", ""))
        ctx = EventContext(page_host, pseudonymize)
        shared, parts = self._params_encoded(beacon.shared, ctx)
        plain = True
        for name, value in (*self._forced, *(extra or {}).items()):
            if name in shared:
                plain = False  # set over a kept value: its place in the dict is the first
            shared[name] = value
            parts.append(f"{name}={encode_value(value)}")
        lines = []
        encoded = []
        for line in beacon.lines:
            line_host = UrlScrubber.host(line["dl"]) if "dl" in line else page_host
            ctx = EventContext(line_host, pseudonymize)
            out, line_parts = self._params_encoded(line, ctx)
            lines.append(out)
            encoded.append("&".join(line_parts))
        if not plain:
            return Sanitized(shared, lines, ())
        return Sanitized(shared, lines, (), "&".join(parts), "\n".join(encoded))

    def _params_encoded(self, params: Params, ctx: EventContext) -> tuple[Params, list[str]]:
        # The serving path: what _params does, through the flat table, and each kept value's
        # "name=encoded" part. Only what changes is counted, by an integer add to a
        # precompiled slot.
        entries, counts = self._entries, self._counts.counts
        out: Params = {}
        parts: list[str] = []
        for name, value in params.items():
            entry = entries.get(name)
            if entry is None:
                counts[self._dropped.get(name) or self._unlisted(name)] += 1
                continue
            kind, fn, drop, change, memo = entry
            if kind is _SHAPE:
                known = memo.get(value)  # type: ignore[union-attr]
                if known is not None:
                    out[name] = value
                    parts.append(known)
                    continue
                if fn(value):  # type: ignore[misc]
                    out[name] = value  # raw: the shape passes no character to encode
                    known = f"{name}={value}"
                    parts.append(known)
                    if len(memo) >= MEMO_SIZE:  # type: ignore[arg-type]
                        memo.clear()  # type: ignore[union-attr]
                    memo[value] = known  # type: ignore[index]
                    continue
                # Out of shape (dropped), or in shape with characters to encode.
                fn = self._policy.table[name].fn
            elif kind is _KEEP_RAW:
                out[name] = value
                parts.append(f"{name}={encode_value(value)}")
                continue
            elif kind is _DROP_ALL:
                counts[drop] += 1
                continue
            elif memo is not None:
                key: object = value if kind is _MEMO else (ctx.page_host, value)
                known = memo.get(key)
                if known is not None:
                    out[name] = value
                    parts.append(f"{name}={known}")
                    continue
                new = fn(value, ctx)  # type: ignore[misc]
                if new is None:
                    counts[drop] += 1
                    continue
                encoded = encode_value(new)  # type: ignore[arg-type]
                out[name] = new  # type: ignore[assignment]
                parts.append(f"{name}={encoded}")
                if new != value:
                    counts[change] += 1
                elif len(value) <= MEMO_VALUE_MAX:
                    if len(memo) >= MEMO_SIZE:
                        memo.clear()
                    memo[key] = encoded
                    if encoded != value:
                        # Its encoded form decodes to it: parse need not decode it again.
                        if len(self._decoded) >= MEMO_SIZE:
                            self._decoded.clear()
                        self._decoded[encoded] = value
                continue
            new = fn(value, ctx)  # type: ignore[misc]
            if new is None:
                counts[drop] += 1
            else:
                out[name] = new  # type: ignore[assignment]
                parts.append(f"{name}={encode_value(new)}")  # type: ignore[arg-type]
                if new != value:
                    counts[change] += 1
        return out, parts

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
