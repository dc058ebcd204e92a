"""The registry: every source registered once, in order, decodable from config by its tag."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from proxy.consent.registry import COMPILERS, SourceOptions, default_sources, source_type
from proxy.consent.verdict import ConsentInput, Verdict

ORDER = [
    "consent_mode", "cookiebot", "onetrust", "cookieyes", "complianz", "klaro", "didomi",
    "borlabs", "iubenda", "civic", "axeptio", "cookieconsent", "tcf", "bridge",
]


def test_sources_are_registered_in_order() -> None:
    assert [source_type(options) for options in default_sources()] == ORDER


@pytest.mark.parametrize("options", default_sources(), ids=source_type)
def test_every_source_compiles_with_defaults_and_abstains_on_nothing(options: Any) -> None:
    source = COMPILERS[type(options)](options)
    assert source(ConsentInput(cookies={}, events=(), now=0.0)) is Verdict.ABSTAIN


@pytest.mark.parametrize("name", ORDER)
def test_options_decode_from_config_by_their_type_tag(name: str) -> None:
    options = msgspec.convert({"type": name}, SourceOptions)
    assert source_type(options) == name
    assert msgspec.convert(msgspec.to_builtins(options), SourceOptions) == options


@pytest.mark.parametrize(
    "config",
    [
        {"type": "cookiebot", "categroy": "statistics"},  # a typo is refused, not ignored
        {"type": "klaro", "services": []},
        {"type": "onetrust", "groups": [""]},
        {"type": "tcf", "purposes": [25]},
        {"type": "tcf", "vendors": [0]},
        {"type": "usercentrics"},
    ],
    ids=repr,
)
def test_bad_config_is_refused_when_decoded(config: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(config, SourceOptions)
