"""The console script: ``explain`` in its three input forms, and ``serve`` as a process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from proxy import __version__
from proxy.cli import main
from proxy.config import EU_ENDPOINT
from tests.conftest import GA4_HITS
from tests.serve_process import start_serve, wait_until_up

ROOT = Path(__file__).parent.parent
HIT = next(h for h in GA4_HITS if h["id"] == "TV-04")
CAPTURED_CID = "1874137241.1685438100"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "proxy.yaml"
    path.write_text(
        "measurement_ids: [G-18JR3Q8PJ8, G-VBMFL9G8M0, G-F9PE5LESJW]\n"
        "upstream: {url: stdout}\n"
        "privacy: {event_params: [percent_scrolled]}\n"
    )
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().out


def test_explain_json_forward_shows_what_leaves(capsys: Any, config_file: Path) -> None:
    code, out = run_cli(capsys, "explain", "--config", str(config_file), "--json",
                        "--cookie", "analytics_consent=granted", "--client-ip", "81.2.69.160",
                        "--header", "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) "
                        "Gecko/20100101 Firefox/128.0", HIT["url"])
    assert code == 0
    result = json.loads(out)
    assert result["decision"] == "forward" and result["reason"] == "granted"
    assert result["source"] == "bridge"
    forwarded = result["forwarded"]
    assert forwarded["url"].startswith("https://region1.google-analytics.com/g/collect?")
    assert CAPTURED_CID not in forwarded["url"]
    assert "81.2.69.160" not in json.dumps(forwarded)
    assert forwarded["headers"]["User-Agent"].endswith("Firefox/128.0")
    changes = {c["param"]: c for c in result["changes"]}
    assert changes["cid"]["action"] == "replaced" and changes["cid"]["before"] == CAPTURED_CID
    assert changes["sct"]["action"] == "dropped"
    assert changes["_uip"]["after"] == "81.2.69.0"


def test_explain_drop_names_the_reason(capsys: Any, config_file: Path) -> None:
    code, out = run_cli(capsys, "explain", "--config", str(config_file), "--json",
                        "--country", "DE", HIT["url"])
    result = json.loads(out)
    assert (code, result["decision"], result["reason"], result["forwarded"]) == (
        0, "drop", "no_consent", None)
    assert result["regime"] == "opt_in"


def test_explain_reads_every_cookie_header_given(capsys: Any, config_file: Path) -> None:
    code, out = run_cli(capsys, "explain", "--config", str(config_file), "--json",
                        "--header", "Cookie: analytics_consent=denied",
                        "--header", "Cookie: analytics_consent=granted", HIT["url"])
    assert (code, json.loads(out)["reason"]) == (0, "denied")


def test_explain_text_is_readable(capsys: Any, config_file: Path) -> None:
    _, out = run_cli(capsys, "explain", "--config", str(config_file),
                     "--cookie", "analytics_consent=granted", HIT["url"])
    assert out.startswith("FORWARD  granted by bridge")
    assert "cid" in out and "replaced" in out and "→" in out
    assert "\x1b[" not in out  # no colour when not a terminal


def test_explain_jsonl_gives_one_result_per_line(capsys: Any, config_file: Path,
                                                 tmp_path: Path) -> None:
    lines = [{"url": h["url"], "method": h["method"], "body": h["body"],
              "cookie": "analytics_consent=granted", "headers": {}, "country": "GB",
              "region": None, "client_ip": "81.2.69.160"} for h in GA4_HITS]
    path = tmp_path / "beacons.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    _, out = run_cli(capsys, "explain", "--config", str(config_file), "--jsonl", str(path))
    results = [json.loads(line) for line in out.splitlines()]
    assert len(results) == len(GA4_HITS)
    by_id = {h["id"]: r for h, r in zip(GA4_HITS, results, strict=True)}
    assert by_id["TV-05"]["reason"] == "denied"  # gcs=G100 on the beacon
    assert by_id["TV-11"]["reason"] == "unknown_tid"
    assert by_id["TV-04"]["decision"] == "forward"


def test_explain_har_reads_only_collect_requests(capsys: Any, config_file: Path,
                                                 tmp_path: Path) -> None:
    batch = next(h for h in GA4_HITS if h["body"])
    entries = [
        {"request": {"method": "GET", "url": "https://www.example.com/", "headers": []}},
        {"request": {"method": "POST", "url": HIT["url"],
                     "headers": [{"name": "Cookie", "value": "analytics_consent=granted"},
                                 {"name": "User-Agent", "value": "Mozilla/5.0"}]}},
        {"request": {"method": "POST", "url": batch["url"].replace("G-XXXXX", "G-18JR3Q8PJ8"),
                     "cookies": [{"name": "analytics_consent", "value": "denied"}],
                     "headers": [], "postData": {"text": batch["body"]}}},
    ]
    path = tmp_path / "site.har"
    path.write_text(json.dumps({"log": {"entries": entries}}))
    _, out = run_cli(capsys, "explain", "--config", str(config_file), "--json",
                     "--har", str(path))
    results = [json.loads(line) for line in out.splitlines()]
    assert [r["decision"] for r in results] == ["forward", "drop"]
    assert results[1]["reason"] == "denied"


def test_bad_config_exits_2_naming_the_key(capsys: Any, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("measurement_ids: [G-ABCDEF1]\nprivacy: {profile: lax}\n")
    assert main(["explain", "--config", str(path), HIT["url"]]) == 2
    assert "privacy.profile" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("yaml", "key"),
    [
        ("consent: {sources: [{type: klaro, services: []}]}", "consent.sources[0].services"),
        ("privacy: {overrides: {cid: keep}}", "privacy.overrides.cid"),
        ("geo: {database: /nonexistent/GeoLite2-City.mmdb}", "geo.database"),
    ],
)
def test_options_judged_at_compile_time_also_exit_2(
    capsys: Any, tmp_path: Path, yaml: str, key: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"measurement_ids: [G-ABCDEF1]\n{yaml}\n")
    assert main(["serve", "--config", str(path)]) == 2
    assert key in capsys.readouterr().err


def test_serve_dry_run_prints_forwarded_request_and_stops_on_sigterm(tmp_path: Path) -> None:
    proc, port, _ = start_serve(tmp_path, "proxy", "measurement_ids: [G-18JR3Q8PJ8]\n"
                                "upstream: {url: stdout, shutdown_grace: 0}\n")
    try:
        wait_until_up(port)
        query = HIT["url"].split("?", 1)[1]
        req = urllib.request.Request(f"http://127.0.0.1:{port}/g/collect?{query}", data=b"",
                                     headers={"Cookie": "analytics_consent=granted",
                                              "User-Agent": FIREFOX})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 204
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    line = json.loads(out.strip().splitlines()[0])
    assert line["dry_run"] is True
    assert line["url"].startswith(f"{EU_ENDPOINT}?v=2&tid=G-18JR3Q8PJ8")
    assert CAPTURED_CID not in line["url"]
    logs = [json.loads(entry) for entry in err.strip().splitlines()]
    assert any(entry["message"] == "serving" for entry in logs)
    assert CAPTURED_CID not in err and "127.0.0.1" not in out


WORKER_BEACONS, WORKER_CONSENTED = 40, 10


def metric_value(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[dict[str, Any]]]:
    """``serve --workers 2`` after beacons spread over both: the admin port's /metrics
    (once every worker's deferred counts arrived) and the processes' log lines."""
    tmp_path = tmp_path_factory.mktemp("workers")
    proc, port, admin = start_serve(tmp_path, "proxy", "measurement_ids: [G-18JR3Q8PJ8]\n"
                                    "upstream: {url: stdout, shutdown_grace: 0}\n",
                                    "--workers", "2")
    log_lines: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: log_lines.extend(
        json.loads(line) for line in proc.stderr), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        for _ in range(300):  # bounded wait until both workers serve
            if sum(e["message"] == "serving" for e in log_lines) == 2:
                break
            time.sleep(0.05)
        query = HIT["url"].split("?", 1)[1]
        for number in range(WORKER_BEACONS + WORKER_CONSENTED):
            # A new connection each: the kernel spreads them over the workers.
            headers = {"User-Agent": FIREFOX}
            if number < WORKER_CONSENTED:
                headers["Cookie"] = "analytics_consent=granted"
            req = urllib.request.Request(f"http://127.0.0.1:{port}/g/collect?{query}",
                                         data=b"", headers=headers)
            with urllib.request.urlopen(req, timeout=5) as resp:
                assert resp.status == 204
        deferred = {  # counted in plain integers, moved by each worker once a second
            'analytics_proxy_parameters_changed_total{action="replaced",rule="pseudonym"}':
                WORKER_CONSENTED,
            'analytics_proxy_consent_decisions_total{source="none",verdict="no_consent"}':
                WORKER_BEACONS,
            'analytics_proxy_consent_decisions_total{source="bridge",verdict="granted"}':
                WORKER_CONSENTED,
        }
        for _ in range(100):  # bounded wait for the workers' next move
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            if all(metric_value(text, k) == v for k, v in deferred.items()):
                break
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        reader.join(timeout=10)
    assert proc.returncode == 0
    return text, log_lines


def test_workers_share_the_port_and_metrics_add_up(
    two_workers: tuple[str, list[dict[str, Any]]]
) -> None:
    text, log_lines = two_workers
    serving = [e for e in log_lines if e["message"] == "serving"]
    assert len(serving) == 2  # two processes bound the same port
    total, consented = WORKER_BEACONS + WORKER_CONSENTED, WORKER_CONSENTED
    # Counted in whichever worker took each beacon, summed on the admin port.
    expected = {
        "analytics_proxy_beacons_received_total": total,
        'analytics_proxy_beacons_dropped_total{reason="no_consent"}': WORKER_BEACONS,
        'analytics_proxy_consent_decisions_total{source="none",verdict="no_consent"}':
            WORKER_BEACONS,
        'analytics_proxy_consent_decisions_total{source="bridge",verdict="granted"}': consented,
        'analytics_proxy_consent_regime_decisions_total{regime="unknown",verdict="granted"}':
            consented,
        'analytics_proxy_beacons_accepted_total{reason="granted"}': consented,
        "analytics_proxy_beacons_forwarded_total": consented,
        "analytics_proxy_events_forwarded_total": consented,
        "analytics_proxy_upstream_request_duration_seconds_count": consented,
        'analytics_proxy_parameters_changed_total{action="replaced",rule="pseudonym"}':
            consented,
        # Gauges, by their multiprocess mode: queues and memory outboxes add up (each worker
        # has its own); configuration and build do not.
        "analytics_proxy_queue_depth": 0,
        "analytics_proxy_outbox_max_entries": 2 * 10_000,
        "analytics_proxy_salt_rotation_seconds": 86_400,
        'analytics_proxy_build_info{version="' + __version__ + '"}': 1,
        'analytics_proxy_salt_source{source="memory"}': 1,
    }
    assert {series: metric_value(text, series) for series in expected} == expected
    salt_age = metric_value(text, "analytics_proxy_salt_age_seconds")
    assert salt_age is not None and 0 < salt_age < 86_400


def test_promtool_accepts_the_workers_summed_exposition(
    two_workers: tuple[str, list[dict[str, Any]]], promtool: str
) -> None:
    run = subprocess.run([promtool, "check", "metrics"], input=two_workers[0],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and not (run.stdout + run.stderr).strip(), run.stdout + run.stderr


# --- Where the configuration comes from -------------------------------------------------------


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A working directory with ./config/proxy.yaml, a stand-in for /etc/analytics-proxy and
    a file named by the environment: each with its own measurement id."""
    from proxy import cli

    found = {"cwd": tmp_path / "work" / "config" / "proxy.yaml",
             "etc": tmp_path / "etc" / "analytics-proxy" / "proxy.yaml",
             "env": tmp_path / "env.yaml", "flag": tmp_path / "flag.yaml"}
    for name, path in found.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"measurement_ids: [G-{name.upper()}1234]\nupstream: {{url: stdout}}\n")
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setattr(cli, "CONFIG_SEARCH", (cli.DEFAULT_CONFIG_PATH, found["etc"]))
    monkeypatch.delenv(cli.CONFIG_ENV, raising=False)
    return found


@pytest.mark.parametrize(("given", "expected"), [
    (("flag", "env", "cwd", "etc"), "flag"),
    (("env", "cwd", "etc"), "env"),
    (("cwd", "etc"), "cwd"),
    (("etc",), "etc"),
])
def test_config_is_found_in_order(places: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                  given: tuple[str, ...], expected: str) -> None:
    """--config, then $ANALYTICS_PROXY_CONFIG, then ./config/proxy.yaml, then
    /etc/analytics-proxy/proxy.yaml."""
    from proxy.cli import config_path
    from proxy.config import load

    for name in {"cwd", "etc"} - set(given):
        places[name].unlink()
    if "env" in given:
        monkeypatch.setenv("ANALYTICS_PROXY_CONFIG", str(places["env"]))
    flag = str(places["flag"]) if "flag" in given else None
    path = config_path(flag)
    assert path.resolve() == places[expected].resolve()
    assert load(path, env={}).measurement_ids == [f"G-{expected.upper()}1234"]


def test_a_command_without_config_reads_the_working_directorys(
        places: dict[str, Path], capsys: Any) -> None:
    beacon = "https://x.example/g/collect?v=2&tid={}&cid=1.2&en=page_view"
    results = [json.loads(run_cli(capsys, "explain", "--json", beacon.format(tid))[1])
               for tid in ("G-CWD1234", "G-ETC1234")]
    assert [r["reason"] for r in results] == ["no_consent", "unknown_tid"]


def test_no_configuration_anywhere_exits_2_saying_where_it_looked(
        places: dict[str, Path], capsys: Any) -> None:
    places["cwd"].unlink()
    places["etc"].unlink()
    assert main(["report"]) == 2
    err = capsys.readouterr().err
    assert "ANALYTICS_PROXY_CONFIG" in err and "./config/proxy.yaml" in err
    assert str(places["etc"]) in err


def test_a_named_file_that_is_missing_is_an_error_not_a_fallback(
        places: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setenv("ANALYTICS_PROXY_CONFIG", str(places["env"].with_name("gone.yaml")))
    assert main(["report"]) == 2
    assert "gone.yaml" in capsys.readouterr().err


# --- explain --har with the visitor's address and country -------------------------------------


def har_file(tmp_path: Path, *urls: str) -> Path:
    entries = [{"request": {"method": "POST", "url": url,
                            "headers": [{"name": "Cookie", "value": "analytics_consent=granted"},
                                        {"name": "User-Agent", "value": FIREFOX}]}}
               for url in urls]
    path = tmp_path / "site.har"
    path.write_text(json.dumps({"log": {"entries": entries}}))
    return path


def test_explain_har_applies_client_ip_and_country_to_every_beacon(
        capsys: Any, config_file: Path, tmp_path: Path) -> None:
    other = next(h for h in GA4_HITS if h["id"] == "TV-01")["url"]
    har = har_file(tmp_path, HIT["url"], other)
    _, out = run_cli(capsys, "explain", "--config", str(config_file), "--json",
                     "--client-ip", "81.2.69.160", "--country", "US", "--region", "CA",
                     "--har", str(har))
    results = [json.loads(line) for line in out.splitlines()]
    assert len(results) == 2
    for result in results:
        assert result["place"] == {"country": "US", "region": "CA"}
        assert result["location"]["sent"] == "81.2.69.0"
        assert "_uip=81.2.69.0" in result["forwarded"]["url"]


def test_explain_har_country_decides_the_regime(capsys: Any, config_file: Path,
                                                tmp_path: Path) -> None:
    har = har_file(tmp_path, HIT["url"])
    har.write_text(har.read_text().replace("analytics_consent=granted", "other=1"))
    _, out = run_cli(capsys, "explain", "--config", str(config_file), "--json",
                     "--country", "DE", "--har", str(har))
    result = json.loads(out)
    assert (result["decision"], result["reason"], result["regime"]) == (
        "drop", "no_consent", "opt_in")


def test_explain_jsonl_lines_keep_their_own_visitor(capsys: Any, config_file: Path,
                                                    tmp_path: Path) -> None:
    lines = [{"url": HIT["url"], "cookie": "analytics_consent=granted",
              "client_ip": "192.0.2.7", "country": "FR"},
             {"url": HIT["url"], "cookie": "analytics_consent=granted"}]
    path = tmp_path / "beacons.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines))
    _, out = run_cli(capsys, "explain", "--config", str(config_file), "--json",
                     "--client-ip", "81.2.69.160", "--country", "US", "--region", "CA",
                     "--jsonl", str(path))
    first, second = (json.loads(line) for line in out.splitlines())
    assert (first["place"], first["location"]["sent"]) == (
        {"country": "FR", "region": None}, "192.0.2.0")
    assert (second["place"], second["location"]["sent"]) == (
        {"country": "US", "region": "CA"}, "81.2.69.0")


def test_explain_without_an_address_says_none_was_given(capsys: Any,
                                                        config_file: Path) -> None:
    _, out = run_cli(capsys, "explain", "--config", str(config_file),
                     "--cookie", "analytics_consent=granted", HIT["url"])
    line = next(x for x in out.splitlines() if "location sent" in x)
    assert "nothing" in line and "no visitor address given" in line
    assert "network part" not in line


@pytest.mark.parametrize(("flag", "content", "says"), [
    ("--har", "not json", "is not a HAR file"),
    ("--har", "[1]", "is not a HAR file"),
    ("--jsonl", "{\"no_url\": 1}\n", "is not JSON lines"),
])
def test_explain_unreadable_input_is_a_message_not_a_traceback(
        capsys: Any, config_file: Path, tmp_path: Path, flag: str, content: str, says: str
) -> None:
    path = tmp_path / "input"
    path.write_text(content)
    with pytest.raises(SystemExit) as exited:
        main(["explain", "--config", str(config_file), flag, str(path)])
    assert says in str(exited.value.code) and str(path) in str(exited.value.code)


# --- A closed pipe ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", [
    ["explain", "--json", "--jsonl", "{jsonl}"],
    ["explain", "--jsonl", "{jsonl}"],
    ["report", "--format", "html"],
])
def test_a_reader_that_stops_early_ends_the_command_quietly(
        config_file: Path, tmp_path: Path, command: list[str]) -> None:
    """``analytics-proxy explain --json … | head -1``: no traceback, the shell's status for a
    SIGPIPE (141)."""
    path = tmp_path / "beacons.jsonl"
    path.write_text("".join(json.dumps({"url": HIT["url"], "cookie": "analytics_consent=granted"})
                            + "\n" for _ in range(2000)))
    argv = [arg.replace("{jsonl}", str(path)) for arg in command]
    proc = subprocess.Popen([sys.executable, "-m", "proxy", *argv, "--config", str(config_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()  # `head -1`: one line, then the reader is gone
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert err == ""
    # The report may fit in the pipe's buffer before the reader leaves; 2,000 beacons do not.
    assert proc.returncode == (141 if command[0] == "explain" else proc.returncode)
    assert proc.returncode in (0, 141)


def test_explain_reads_every_forwarding_header_line_given(
    capsys: Any, config_file: Path
) -> None:
    # Two proxies, each appending its own line: the inner one (127.0.0.1, trusted) wrote the
    # last; the walk from the right goes on into the first line, as in serve.
    code, out = run_cli(capsys, "explain", "--config", str(config_file), "--json",
                        "--cookie", "analytics_consent=granted", "--client-ip", "127.0.0.1",
                        "--header", "X-Forwarded-For: 81.2.69.160",
                        "--header", "X-Forwarded-For: 127.0.0.1", HIT["url"])
    changes = {c["param"]: c for c in json.loads(out)["changes"] if c["scope"] == "query"}
    assert code == 0
    assert changes["_uip"]["after"] == "81.2.69.0"
