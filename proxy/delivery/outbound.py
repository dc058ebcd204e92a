"""What goes to Google: one sanitised request, the only thing a sender ever sends."""

from __future__ import annotations

from dataclasses import dataclass

BEACON = "g"  # OutboundRequest.kind of a /g/collect hit
MEASUREMENT_PROTOCOL = "mp"


@dataclass(frozen=True, slots=True)
class OutboundRequest:
    """Exactly what goes to Google: sanitised query and body, rebuilt User-Agent."""

    query: str
    body: str
    user_agent: str
    kind: str = BEACON  # or MEASUREMENT_PROTOCOL: JSON for its own endpoint (proxy/mp/)

    def headers(self) -> dict[str, str]:
        # Nothing else, ever: no cookie, no X-Forwarded-*, no Referer/Origin, no client hints.
        if self.kind == MEASUREMENT_PROTOCOL:
            return {"User-Agent": self.user_agent, "Content-Type": "application/json"}
        return {"User-Agent": self.user_agent, "Content-Type": "text/plain;charset=UTF-8"}
