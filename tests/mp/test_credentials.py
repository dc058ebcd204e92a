"""Tokens and Google's secret come from the environment only, and never show."""

from __future__ import annotations

import pytest

from proxy.config import ConfigError
from proxy.mp.credentials import load_credentials
from tests.mp.conftest import SECRET, TID, TOKEN

TOKEN_VAR = "ANALYTICS_PROXY_MP_TOKEN_G_TEST1234"
SECRET_VAR = "ANALYTICS_PROXY_MP_API_SECRET_G_TEST1234"


def test_a_pair_serves_its_id_and_compares_its_token_only() -> None:
    creds = load_credentials({TOKEN_VAR: TOKEN, SECRET_VAR: SECRET}, [TID, "G-OTHER999"])
    assert creds.ids == {TID}
    assert creds.accepts(TID, TOKEN)
    assert not creds.accepts(TID, SECRET)  # Google's secret is not a token
    assert not creds.accepts(TID, TOKEN + "x") and not creds.accepts(TID, "")
    assert not creds.accepts("G-OTHER999", TOKEN)
    assert creds.secret(TID) == SECRET and creds.secret("G-OTHER999") is None
    assert TOKEN not in repr(creds) and SECRET not in repr(creds)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({TOKEN_VAR: TOKEN}, SECRET_VAR),
        ({SECRET_VAR: SECRET}, TOKEN_VAR),
        ({TOKEN_VAR: "short-token", SECRET_VAR: SECRET}, TOKEN_VAR),
        ({TOKEN_VAR: SECRET, SECRET_VAR: SECRET}, TOKEN_VAR),
        ({TOKEN_VAR: TOKEN, SECRET_VAR: SECRET,
          "ANALYTICS_PROXY_MP_TOKEN_G_NOTLISTED": TOKEN}, "ANALYTICS_PROXY_MP_TOKEN_G_NOTLISTED"),
    ],
    ids=["no-secret", "no-token", "short-token", "token-is-the-secret", "unknown-id"],
)
def test_a_half_set_or_weak_pair_stops_start_up_naming_the_variable_not_its_value(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_credentials(env, [TID])
    assert named in str(caught.value)
    assert TOKEN not in str(caught.value) and SECRET not in str(caught.value)


def test_no_variables_leave_the_endpoint_inert() -> None:
    assert load_credentials({}, [TID]).ids == frozenset()
