"""``explain`` takes a Measurement Protocol request as serve would (its URL and JSON body),
and the transfer report says what server-side events forward."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config import from_mapping
from proxy.observe.report import build_report
from tests.mp.conftest import CLIENT_ID, TID, event_body

ROOT = Path(__file__).parent.parent.parent


def test_explain_shows_the_json_google_would_get(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text(f"measurement_ids: [{TID}]\nupstream: {{url: stdout}}\n")
    body = event_body(user_id="customer-zelmorva-88213", ip_override="198.51.100.77")
    run = subprocess.run(
        [sys.executable, "-m", "proxy", "explain", "--config", str(config), "--json",
         f"https://stats.example.com/mp/collect?measurement_id={TID}", "--body",
         json.dumps(body)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={"PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["decision"] == "forward" and result["reason"] == "granted"
    forwarded = result["forwarded"]
    assert forwarded["url"] == ("https://region1.google-analytics.com/mp/collect"
                                f"?measurement_id={TID}")
    assert forwarded["headers"]["Content-Type"] == "application/json"
    sent = json.loads(forwarded["body"])
    assert "zelmorva" not in forwarded["body"] and sent["client_id"] != CLIENT_ID
    assert result["location"]["sent"] == "198.51.100.0"
    fates = {(c["param"], c["action"]) for c in result["changes"]}
    assert {("user_id", "dropped"), ("cid", "replaced"), ("ip_override", "replaced")} <= fates


@pytest.mark.parametrize("enabled", [True, False])
def test_the_report_lists_what_server_side_events_forward(enabled: bool) -> None:
    config = from_mapping({"measurement_ids": [TID], "privacy": {"event_params": ["value"]},
                           "measurement_protocol": {"enabled": enabled}}, env={})
    report = build_report(config)
    mp = report.to_json()["measurement_protocol"]
    markdown = report.to_markdown()
    assert "## Server-side events (Measurement Protocol)" in markdown
    if not enabled:
        assert mp["fields"] == [] and "off" in mp["summary"]
        return
    fields = {f["field"]: f["treatment"] for f in mp["fields"]}
    assert fields["user_id"] == "dropped" and fields["user_location"] == "dropped"
    assert fields["client_id"] == "replaced" and fields["ip_override"] == "replaced"
    assert "`value`" in next(f["form"] for f in mp["fields"] if f["field"] == "events[].params")
    assert "https://region1.google-analytics.com/mp/collect" in markdown
