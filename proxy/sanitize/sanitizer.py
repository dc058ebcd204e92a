"""Applies the compiled ``Policy`` to a parsed ``Beacon``, keeping the batch shape."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from proxy.beacon import Beacon, Params
from proxy.policy import Action, EventContext, Policy
from proxy.sanitize.urls import UrlScrubber

_KEEP = object()
_DROP = object()


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


@dataclass(frozen=True, slots=True)
class Sanitized:
    shared: Params
    lines: list[Params]
    changes: tuple[Change, ...]


class Sanitizer:
    """Stateless once built; ``sanitize`` reads only the compiled table."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._forced = tuple(policy.forced.items())
        # name -> rule function, or the _KEEP/_DROP markers; unknown names are absent (drop).
        self._fns: dict[str, object] = {
            name: (rule.fn or (_KEEP if rule.action is Action.KEPT else _DROP))
            for name, rule in policy.table.items()
        }

    @property
    def policy(self) -> Policy:
        return self._policy

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
        out: Params = {}
        for name, value in params.items():
            rule = rule_of(name)
            fn = rule.fn
            if fn is None:
                kept = rule.action is Action.KEPT
                if kept:
                    out[name] = value
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
        # The serving path: the same table as _params, without the trace bookkeeping.
        fns = self._fns
        out: Params = {}
        for name, value in params.items():
            fn = fns.get(name, _DROP)
            if fn is _KEEP:
                out[name] = value
            elif fn is not _DROP:
                new = fn(value, ctx)  # type: ignore[operator]
                if new is not None:
                    out[name] = new
        return out
