"""Per measurement id: the token a back end presents and Google's ``api_secret``, both from
the environment only (``ANALYTICS_PROXY_MP_TOKEN_<ID>``, ``ANALYTICS_PROXY_MP_API_SECRET_<ID>``,
the id's ``-`` written ``_``). Neither is ever logged, put in a message or shown by ``repr``.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping

from proxy.config import ConfigError

TOKEN_PREFIX = "ANALYTICS_PROXY_MP_TOKEN_"
SECRET_PREFIX = "ANALYTICS_PROXY_MP_API_SECRET_"
MIN_TOKEN = 16  # characters: a guessable token would open Google's property to anyone


def env_suffix(measurement_id: str) -> str:
    return measurement_id.replace("-", "_")


class Credentials:
    """Which back end may post for which id, and the secret the proxy adds for Google."""

    def __init__(self, pairs: Mapping[str, tuple[str, str]] | None = None) -> None:
        self._tokens = {mid: token.encode() for mid, (token, _) in (pairs or {}).items()}
        self._secrets = {mid: secret for mid, (_, secret) in (pairs or {}).items()}

    def __repr__(self) -> str:
        return f"Credentials(ids={sorted(self._tokens)})"

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(self._tokens)

    def accepts(self, measurement_id: str, token: str) -> bool:
        """The token is this id's, compared in constant time (an unknown id compares with a
        throwaway value, so timing does not tell configured ids apart either)."""
        expected = self._tokens.get(measurement_id)
        given = token.encode()
        if expected is None:
            hmac.compare_digest(given, b"\0" * MIN_TOKEN)
            return False
        return hmac.compare_digest(given, expected)

    def secret(self, measurement_id: str) -> str | None:
        return self._secrets.get(measurement_id)


def load_credentials(env: Mapping[str, str], measurement_ids: Iterable[str]) -> Credentials:
    """Read every id's pair; a half-configured or unknown id stops start-up with a
    ``ConfigError`` that names the variable, never its value."""
    ids = {env_suffix(mid): mid for mid in measurement_ids}
    for var in env:
        for prefix in (TOKEN_PREFIX, SECRET_PREFIX):
            if var.startswith(prefix) and var.removeprefix(prefix) not in ids:
                raise ConfigError(f"{var}: no such id in measurement_ids")
    pairs: dict[str, tuple[str, str]] = {}
    for suffix, mid in ids.items():
        token, secret = env.get(TOKEN_PREFIX + suffix), env.get(SECRET_PREFIX + suffix)
        if not token and not secret:
            continue
        if not token or not secret:
            missing = TOKEN_PREFIX if not token else SECRET_PREFIX
            raise ConfigError(f"{missing}{suffix}: needed as well, or the id is not served")
        if len(token.strip()) < MIN_TOKEN or token != token.strip():
            raise ConfigError(f"{TOKEN_PREFIX}{suffix}: at least {MIN_TOKEN} characters, "
                              "no surrounding spaces")
        if hmac.compare_digest(token.encode(), secret.encode()):
            raise ConfigError(f"{TOKEN_PREFIX}{suffix}: must differ from Google's api_secret")
        pairs[mid] = (token, secret)
    return Credentials(pairs)
