"""Complianz: one plain cookie per category, ``cmplz_statistics=allow|deny`` (§4).

Multisite installs use the ``cmplz_rt_`` prefix; both are read by default, since a stale copy
under the other prefix must still be able to deny.
"""

from __future__ import annotations

import msgspec

from proxy.consent.reading import Name, Names, combine, require
from proxy.consent.verdict import ConsentInput, ConsentSource, Verdict
from proxy.ingest.cookies import unquote_twice

_VERDICTS = {"allow": Verdict.GRANT, "deny": Verdict.DENY}


class ComplianzOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                       tag_field="type", tag="complianz"):
    prefixes: Names = ("cmplz_", "cmplz_rt_")
    category: Name = "statistics"


def value_verdict(raw: str) -> Verdict:
    """The verdict of one category cookie's value."""
    return _VERDICTS.get(unquote_twice(raw).strip().lower(), Verdict.ABSTAIN)


def compile_source(options: ComplianzOptions) -> ConsentSource:
    require("complianz", "prefixes", options.prefixes)
    require("complianz", "category", options.category)
    names = tuple(dict.fromkeys(prefix + options.category for prefix in options.prefixes))

    def complianz(inp: ConsentInput) -> Verdict:
        return combine(
            value_verdict(value) for name in names for value in inp.cookies.get(name, ())
        )

    return complianz
