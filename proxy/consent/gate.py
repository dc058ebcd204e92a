"""The consent gate: every source's verdict, privacy headers and the regime default,
combined by the rule of consent-signals.md §1. Anything doubtful drops."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.config import Consent
from proxy.consent.registry import COMPILERS, source_type
from proxy.consent.verdict import ConsentInput, ConsentSource, Verdict
from proxy.location.regions import Regime

# What a source reads: cookies by name, and cookies by name prefix. None: the beacon's own
# parameters (or a source this table does not know), so it is asked on every beacon.
Reads = tuple[frozenset[str], tuple[str, ...]] | None


def cookies_read(options: Any) -> Reads:
    """The cookies a source's verdict comes from. A source none of whose cookies is on the
    request abstains (each module returns ABSTAIN first thing when its cookie is absent), so
    the gate asks only the sources whose cookie is present, and consent_mode always."""
    kind = source_type(options)
    if kind == "complianz":
        return frozenset(prefix + options.category for prefix in options.prefixes), ()
    if kind == "tcf":
        return frozenset(options.cookies), ()
    if kind == "iubenda":
        return frozenset(), (options.cookie_prefix,)
    cookie = getattr(options, "cookie", None)
    if kind != "consent_mode" and isinstance(cookie, str):
        return frozenset((cookie,)), ()
    return None


@dataclass(frozen=True, slots=True)
class ConsentVerdict:
    """The gate's decision. ``reason`` is a low-cardinality code, safe for metric labels."""

    forward: bool
    reason: str  # granted | implied | default | denied | gpc | dnt | no_consent | consent_error
    source: str | None  # the deciding source type, "gpc"/"dnt", or None for the regime default
    regime: Regime
    verdicts: tuple[tuple[str, Verdict], ...]  # every source's reading, in configured order


def unreadable(regime: Regime) -> ConsentVerdict:
    """The decision when the evidence cannot be read (a source raised, or the Cookie header is
    refused): drop, whatever the regime's default."""
    return ConsentVerdict(False, "consent_error", None, regime, ())


class ConsentGate:
    """Compiled once from ``consent`` configuration; ``decide`` only reads."""

    def __init__(self, config: Consent) -> None:
        self._sources: tuple[tuple[str, ConsentSource], ...] = tuple(
            (source_type(options), COMPILERS[type(options)](options)) for options in config.sources
        )
        # Which sources to ask: always, by the name of a cookie present, by a name's prefix.
        self._always: list[int] = []
        self._by_cookie: dict[str, list[int]] = {}
        self._by_prefix: list[tuple[str, int]] = []
        for index, options in enumerate(config.sources):
            reads = cookies_read(options)
            if reads is None:
                self._always.append(index)
                continue
            names, prefixes = reads
            for name in names:
                self._by_cookie.setdefault(name, []).append(index)
            self._by_prefix.extend((prefix, index) for prefix in prefixes)
        self._abstained = [(name, Verdict.ABSTAIN) for name, _ in self._sources]
        self._gpc = config.gpc
        self._dnt_denies = config.dnt == "deny"
        defaults = config.defaults
        self._default_forward = {
            Regime.OPT_IN: defaults.opt_in == "forward",
            Regime.OPT_OUT: defaults.opt_out == "forward",
            Regime.OTHER: defaults.other == "forward",
            Regime.UNKNOWN: defaults.unknown == "forward",
        }

    @property
    def source_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._sources)

    def decide(self, inp: ConsentInput, *, gpc: bool, dnt: bool, regime: Regime) -> ConsentVerdict:
        sources = self._sources
        asked = self._asked(inp.cookies)
        readings = self._abstained.copy()  # a source not asked has no cookie: it abstains
        try:
            for index in asked:
                name, source = sources[index]
                readings[index] = (name, source(inp))
        except Exception:
            # A source that raises is a source we cannot read: fail closed.
            return unreadable(regime)
        return self._combine(tuple(readings), gpc=gpc, dnt=dnt, regime=regime)

    def decide_all(
        self, inp: ConsentInput, *, gpc: bool, dnt: bool, regime: Regime
    ) -> ConsentVerdict:
        """``decide`` asking every source: what ``decide`` must always agree with (tests)."""
        try:
            verdicts = tuple((name, source(inp)) for name, source in self._sources)
        except Exception:
            return unreadable(regime)
        return self._combine(verdicts, gpc=gpc, dnt=dnt, regime=regime)

    def _asked(self, cookies: dict[str, list[str]]) -> list[int]:
        """The sources to ask, in configured order: those reading the beacon itself and
        those one of whose cookies is present."""
        if not cookies:
            return self._always
        asked = set(self._always)
        by_cookie = self._by_cookie
        for name in cookies:
            indices = by_cookie.get(name)
            if indices is not None:
                asked.update(indices)
        for prefix, index in self._by_prefix:
            if index not in asked and any(name.startswith(prefix) for name in cookies):
                asked.add(index)
        return sorted(asked)

    def _combine(
        self, verdicts: tuple[tuple[str, Verdict], ...], *, gpc: bool, dnt: bool, regime: Regime
    ) -> ConsentVerdict:
        def verdict(forward: bool, reason: str, source: str | None) -> ConsentVerdict:
            return ConsentVerdict(forward, reason, source, regime, verdicts)

        # The first source of each reading, in one pass.
        denied = granted = implied = None
        for name, v in verdicts:
            if v is Verdict.ABSTAIN:
                continue
            if v is Verdict.DENY:
                denied = name
                break
            if v is Verdict.GRANT:
                if granted is None:
                    granted = name
            elif v is Verdict.IMPLIED and implied is None:
                implied = name
        if denied is not None:
            return verdict(False, "denied", denied)
        if dnt and self._dnt_denies:
            return verdict(False, "dnt", "dnt")
        if (
            gpc
            and self._gpc != "ignore"
            and not (granted is not None and self._gpc == "ignore_for_explicit_grant")
        ):
            return verdict(False, "gpc", "gpc")
        if granted is not None:
            return verdict(True, "granted", granted)
        if implied is not None and regime is Regime.OPT_OUT and not gpc:
            return verdict(True, "implied", implied)
        if self._default_forward[regime]:
            return verdict(True, "default", None)
        return verdict(False, "no_consent", None)
