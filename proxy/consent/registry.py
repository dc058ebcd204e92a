"""The table of consent sources: option type -> compiler. Adding a CMP is one module here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from proxy.consent import (
    axeptio,
    borlabs,
    bridge,
    civic,
    complianz,
    consent_mode,
    cookiebot,
    cookieconsent,
    cookieyes,
    didomi,
    iubenda,
    klaro,
    onetrust,
    tcf,
)
from proxy.consent.verdict import ConsentSource

SourceOptions = (
    consent_mode.ConsentModeOptions
    | cookiebot.CookiebotOptions
    | onetrust.OneTrustOptions
    | cookieyes.CookieYesOptions
    | complianz.ComplianzOptions
    | klaro.KlaroOptions
    | didomi.DidomiOptions
    | borlabs.BorlabsOptions
    | iubenda.IubendaOptions
    | civic.CivicOptions
    | axeptio.AxeptioOptions
    | cookieconsent.CookieConsentOptions
    | tcf.TcfOptions
    | bridge.BridgeOptions
)

# Registry order is evaluation and reporting order: beacon evidence first, bridge last.
COMPILERS: dict[type[msgspec.Struct], Callable[[Any], ConsentSource]] = {
    consent_mode.ConsentModeOptions: consent_mode.compile_source,
    cookiebot.CookiebotOptions: cookiebot.compile_source,
    onetrust.OneTrustOptions: onetrust.compile_source,
    cookieyes.CookieYesOptions: cookieyes.compile_source,
    complianz.ComplianzOptions: complianz.compile_source,
    klaro.KlaroOptions: klaro.compile_source,
    didomi.DidomiOptions: didomi.compile_source,
    borlabs.BorlabsOptions: borlabs.compile_source,
    iubenda.IubendaOptions: iubenda.compile_source,
    civic.CivicOptions: civic.compile_source,
    axeptio.AxeptioOptions: axeptio.compile_source,
    cookieconsent.CookieConsentOptions: cookieconsent.compile_source,
    tcf.TcfOptions: tcf.compile_source,
    bridge.BridgeOptions: bridge.compile_source,
}


def source_type(options: msgspec.Struct) -> str:
    """The ``type`` tag of a source's options, e.g. ``"cookiebot"``."""
    return str(type(options).__struct_config__.tag)


def default_sources() -> list[Any]:
    """Every registered source with its default options, in registry order."""
    return [cls() for cls in COMPILERS]
