"""Consent regimes by country (consent-signals.md §7)."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable

EU27 = frozenset(
    [
        "AT",
        "BE",
        "BG",
        "HR",
        "CY",
        "CZ",
        "DK",
        "EE",
        "FI",
        "FR",
        "DE",
        "GR",
        "HU",
        "IE",
        "IT",
        "LV",
        "LT",
        "LU",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SK",
        "SI",
        "ES",
        "SE",
    ]
)
# MaxMind's is_in_european_union covers the EU27 only, so the EEA is spelled out.
EEA = EU27 | {"IS", "LI", "NO"}
GROUPS: dict[str, frozenset[str]] = {"EU": EU27, "EEA": EEA}

_CODE = re.compile(r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$")


class Regime(enum.Enum):
    OPT_IN = "opt_in"
    OPT_OUT = "opt_out"
    OTHER = "other"
    UNKNOWN = "unknown"


def expand_regions(items: Iterable[str]) -> frozenset[str]:
    """``["EEA", "GB", "US-CA"]`` -> a set of country and subdivision codes."""
    out: set[str] = set()
    for item in items:
        code = item.strip().upper()
        if code in GROUPS:
            out |= GROUPS[code]
        elif _CODE.match(code):
            out.add(code)
        else:
            raise ValueError(f"{item!r} is not a country code (ISO 3166), subdivision or group")
    return frozenset(out)


class RegimeMap:
    """Country (and subdivision) to regime, compiled once from configuration."""

    def __init__(self, opt_in: Iterable[str], opt_out: Iterable[str]) -> None:
        table: dict[str, Regime] = {}
        for code in expand_regions(opt_in):
            table[code] = Regime.OPT_IN
        for code in expand_regions(opt_out):
            table[code] = Regime.OPT_OUT
        self._table = table

    def regime(self, country: str | None, region: str | None = None) -> Regime:
        if not country:
            return Regime.UNKNOWN
        country = country.upper()
        if region:
            # A subdivision rule ("US-CA") is more specific than its country's.
            sub = self._table.get(f"{country}-{region.upper()}")
            if sub is not None:
                return sub
        return self._table.get(country, Regime.OTHER)
