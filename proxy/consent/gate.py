"""The consent gate: every source's verdict, privacy headers and the regime default,
combined by the rule of consent-signals.md §1. Anything doubtful drops."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config import Consent
from proxy.consent.registry import COMPILERS, source_type
from proxy.consent.verdict import ConsentInput, ConsentSource, Verdict
from proxy.regions import Regime


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
        try:
            verdicts = tuple((name, source(inp)) for name, source in self._sources)
        except Exception:
            # A source that raises is a source we cannot read: fail closed.
            return unreadable(regime)
        return self._combine(verdicts, gpc=gpc, dnt=dnt, regime=regime)

    def _combine(
        self, verdicts: tuple[tuple[str, Verdict], ...], *, gpc: bool, dnt: bool, regime: Regime
    ) -> ConsentVerdict:
        def verdict(forward: bool, reason: str, source: str | None) -> ConsentVerdict:
            return ConsentVerdict(forward, reason, source, regime, verdicts)

        denied = next((name for name, v in verdicts if v is Verdict.DENY), None)
        if denied is not None:
            return verdict(False, "denied", denied)
        if dnt and self._dnt_denies:
            return verdict(False, "dnt", "dnt")
        granted = next((name for name, v in verdicts if v is Verdict.GRANT), None)
        if (
            gpc
            and self._gpc != "ignore"
            and not (granted is not None and self._gpc == "ignore_for_explicit_grant")
        ):
            return verdict(False, "gpc", "gpc")
        if granted is not None:
            return verdict(True, "granted", granted)
        implied = next((name for name, v in verdicts if v is Verdict.IMPLIED), None)
        if implied is not None and regime is Regime.OPT_OUT and not gpc:
            return verdict(True, "implied", implied)
        if self._default_forward[regime]:
            return verdict(True, "default", None)
        return verdict(False, "no_consent", None)
