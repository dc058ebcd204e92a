"""Bridge cookie: the proxy's own format for CMPs whose state the server cannot read.

The site writes ``analytics_consent=granted|denied`` on its CMP's consent event
(README, "Bridge cookie").
"""

from __future__ import annotations

import msgspec

from proxy.consent.verdict import ConsentInput, ConsentSource, Verdict


class BridgeOptions(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type", tag="bridge"
):
    cookie: str = "analytics_consent"
    granted: str = "granted"
    denied: str = "denied"


def compile_source(options: BridgeOptions) -> ConsentSource:
    verdicts = {options.granted: Verdict.GRANT, options.denied: Verdict.DENY}
    name = options.cookie

    def bridge(inp: ConsentInput) -> Verdict:
        values = inp.cookies.get(name)
        if not values:
            return Verdict.ABSTAIN
        # Every copy counts; an unknown value is a recorded but unreadable choice: abstain.
        found = {verdicts.get(v.strip().lower(), Verdict.ABSTAIN) for v in values}
        if Verdict.DENY in found:
            return Verdict.DENY
        return Verdict.GRANT if Verdict.GRANT in found else Verdict.ABSTAIN

    return bridge
