"""Shared fixtures: the captured data (copied from shared/fixtures, never edited)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def load_jsonl(name: str) -> list[dict[str, Any]]:
    with open(FIXTURES / name, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


GA4_HITS = load_jsonl("ga4-hits.jsonl")
CONSENT_CASES = load_jsonl("consent-cookies.jsonl")


@pytest.fixture
def ga4_hits() -> list[dict[str, Any]]:
    return GA4_HITS
