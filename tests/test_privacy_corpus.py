"""Planted personal data never reaches Google; ordinary values reach it unchanged.

An independent oracle for the scrubbing, end to end. Two corpora in ``tests/fixtures``:

- ``privacy-planted.jsonl``: invented personal values (e-mail addresses in many encodings,
  phone, card, IBAN and national-id numbers with valid check digits, addresses, tokens), each
  in one beacon slot (``family``) with the fragments (``needles``) that must not survive.
- ``privacy-utility.jsonl``: realistic non-personal values (product names, SKUs, prices,
  dates, versions, paths) that must arrive as they were sent.

Each value goes into its slot of an otherwise ordinary beacon, through the real server on a
loopback port to a loopback stand-in for Google (strict and balanced profiles), and through
the real ``explain`` CLI (strict). What arrives is judged by ``tests/oracle.py``, which never
calls the proxy's own detectors. Reports for the scrubber's owner go to ``test-output/``.

The corpora are data, generated once by a throwaway script (check digits computed with
python-stdnum) and edited by hand since; no generator is needed to run or extend them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from proxy.config import from_mapping
from proxy.observe.metrics import Metrics
from proxy.observe.report import build_report
from proxy.sanitize.policy import SHAPES
from proxy.server.public import init_app
from tests.capture import Capture
from tests.conftest import load_jsonl
from tests.oracle import finds, found_needles, normalise

ROOT = Path(__file__).parent.parent
REPORTS = ROOT / "test-output"
TID = "G-TEST1234"
ORIGIN = "https://www.example.com"
UA = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/125.0.6422.142 Safari/537.36"
)
COOKIE = "analytics_consent=granted; _ga=GA1.1.1141082648.1693483972"
CLIENT_IP = "192.0.2.10"
HEADERS = {"User-Agent": UA, "Cookie": COOKIE, "Origin": ORIGIN, "X-Forwarded-For": CLIENT_IP}
# Every ep./epn. name the corpora plant into is allow-listed: a dropped parameter proves nothing.
EVENT_PARAMS = sorted(
    """search_term link_url link_text link_domain page_location page_referrer file_name
    item_list_name form_name content_group content_type video_title heading promotion_name
    campaign version rating duration resolution color hashtag price date sku method value
    quantity order_count""".split()
)
QUERY_ALLOWLIST = ["page", "q"]
UTILITY_PASS_RATE = 0.98

# An ordinary page_view as gtag sends it; each entry overrides one slot.
BASE: dict[str, str] = {
    "v": "2",
    "tid": TID,
    "gtm": "45je4580v9179457443za200",
    "_p": "1715508030123",
    "cid": "1141082648.1693483972",
    "ul": "en-us",
    "sr": "1920x1080",
    "_s": "1",
    "sid": "1715508000",
    "sct": "3",
    "seg": "1",
    "dl": f"{ORIGIN}/shop/",
    "dr": f"{ORIGIN}/",
    "dt": "Shop | Example",
    "en": "page_view",
    "_et": "1200",
    "tag_exp": "101509157~101671035",
}
BASE_ITEM = [("id", "SKU-44120"), ("nm", "Trail Runner 3"), ("br", "Example Outdoor")]
SLOTS = {"dl path": "dl", "dl query": "dl", "dl host": "dl"}


@dataclass(frozen=True)
class Planted:
    id: str
    family: str
    encoding: str
    value: str
    needles: list[str]
    kind: str = ""


@dataclass(frozen=True)
class Utility:
    id: str
    family: str
    value: str


@dataclass(frozen=True)
class Forwarded:
    """What the loopback Google received (or what ``explain`` says would leave)."""

    query: str
    body: str
    headers: dict[str, str]

    def text(self) -> str:
        lines = [self.query, self.body, *(f"{k}: {v}" for k, v in self.headers.items())]
        return "\n".join(lines)

    def params(self) -> dict[str, str]:
        """Shared parameters overlaid with the (single) event line's, as Google reads them."""
        params = dict(parse_qsl(self.query, keep_blank_values=True))
        for line in filter(None, self.body.split("\n")):
            params.update(parse_qsl(line, keep_blank_values=True))
        return params


PLANTED = [Planted(**e) for e in load_jsonl("privacy-planted.jsonl")]
UTILITY = [Utility(**e) for e in load_jsonl("privacy-utility.jsonl")]
Entry = Planted | Utility
Results = dict[str, Forwarded | None]  # entry id -> what arrived; None: not forwarded


def slot_value(entry: Entry) -> str:
    if isinstance(entry, Utility) and entry.family == "dl path":
        return ORIGIN + entry.value
    return entry.value


def beacon_params(entry: Entry) -> dict[str, str]:
    """The base beacon with ``entry``'s value in its family's slot."""
    params = dict(BASE)
    family, value = entry.family, slot_value(entry)
    if family.startswith("pr1."):
        key = family.removeprefix("pr1.").split("~")[0]
        tokens = dict(BASE_ITEM)
        tokens[key] = value
        params["en"] = "view_item"
        params["pr1"] = "~".join(k + v for k, v in tokens.items())
    elif family == "param name":
        params[value] = "1"
    else:
        params[SLOTS.get(family, family)] = value
    return params


def encode(params: dict[str, str]) -> str:
    # %20 for spaces and "~" kept, as gtag writes them.
    return urlencode(params, quote_via=quote, safe="~")


def is_event_level(name: str) -> bool:
    return name in ("en", "_et") or name.startswith(("ep.", "epn.", "pr"))


def beacon_request(entry: Entry, batch: bool = False) -> tuple[str, str]:
    """Query and body: one event in the query, or (``batch``) a scroll event and the
    entry's event as two body lines under the shared parameters, as gtag batches them."""
    params = beacon_params(entry)
    if not batch:
        return encode(params), ""
    shared = {k: v for k, v in params.items() if not is_event_level(k)}
    event = {k: v for k, v in params.items() if is_event_level(k)}
    return encode(shared), "en=scroll&_et=5\n" + encode(event)


def proxy_config(profile: str, upstream: str) -> dict[str, Any]:
    return {
        "measurement_ids": [TID],
        "allowed_origins": [ORIGIN],
        "upstream": {"url": upstream, "backoff_initial": 0.01, "backoff_max": 0.05},
        "rate_limit": {"per_network": 0},
        "privacy": {
            "profile": profile,
            "event_params": EVENT_PARAMS,
            "url_query_allowlist": QUERY_ALLOWLIST,
        },
    }


# ------------------------------------------------------------------------------- the runs


def accepted(metrics: Metrics) -> float:
    return sum(s.value for m in metrics.accepted.collect() for s in m.samples
               if s.name.endswith("_total"))


async def serve(profile: str, entries: Iterable[Entry], batch: bool = False) -> Results:
    """One beacon per entry, in turn, through the real server over loopback sockets."""
    capture = Capture()
    results: Results = {}
    forwarded = 0
    async with TestServer(capture.app(), host="127.0.0.1") as google:
        config = from_mapping(proxy_config(profile, str(google.make_url("/g/collect"))), env={})
        metrics = Metrics()
        server = TestServer(init_app(config, metrics), host="127.0.0.1")
        async with TestClient(server) as client:
            for entry in entries:
                before = accepted(metrics)
                query, body = beacon_request(entry, batch)
                resp = await client.post(f"/g/collect?{query}", data=body, headers=HEADERS)
                await resp.release()
                if accepted(metrics) == before:
                    results[entry.id] = None  # dropped whole: nothing left for Google
                    continue
                forwarded += 1
                hit = (await capture.wait_for(forwarded))[-1]  # one in flight at a time
                results[entry.id] = Forwarded(hit.query, hit.body, hit.headers)
    return results


def explain_lines(entries: Iterable[Entry]) -> str:
    lines = []
    for entry in entries:
        beacon = {
            "url": f"https://stats.example.com/g/collect?{beacon_request(entry)[0]}",
            "method": "POST",
            "body": "",
            "cookie": COOKIE,
            "headers": {"User-Agent": UA, "Origin": ORIGIN},
            "client_ip": CLIENT_IP,
        }
        lines.append(json.dumps(beacon, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def explain(tmp: Path, corpora: dict[str, list[Entry]]) -> dict[str, Results]:
    """One ``analytics-proxy explain --jsonl --json`` process per corpus, run side by side."""
    config = tmp / "proxy.yaml"
    config.write_text(yaml.safe_dump(proxy_config("strict", "stdout")), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_PROXY_")}
    procs = {}
    for name, entries in corpora.items():
        beacons = tmp / f"{name}.jsonl"
        beacons.write_text(explain_lines(entries), encoding="utf-8")
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "proxy", "explain", "--config", str(config),
             "--jsonl", str(beacons), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
        )
    out: dict[str, Results] = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"explain failed on the {name} corpus: {stderr[-2000:]}"
        answers = [json.loads(line) for line in stdout.splitlines() if line.strip()]
        assert len(answers) == len(corpora[name])
        results: Results = {}
        for entry, answer in zip(corpora[name], answers, strict=True):
            fwd = answer["forwarded"]
            results[entry.id] = (
                None if fwd is None
                else Forwarded(urlsplit(fwd["url"]).query, fwd["body"], fwd["headers"])
            )
        out[name] = results
    return out


RUNS = ["serve-strict", "serve-strict-batch", "serve-balanced", "explain-strict"]


@dataclass
class Outcome:
    planted: dict[str, Results]  # run -> entry id -> forwarded
    utility: dict[str, Results]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    tmp = tmp_path_factory.mktemp("privacy-corpus")
    corpora: dict[str, list[Entry]] = {"planted": list(PLANTED), "utility": list(UTILITY)}

    async def served_runs() -> dict[str, dict[str, Results]]:
        runs: dict[str, dict[str, Results]] = {}
        for run, profile, batch in (
            ("serve-strict", "strict", False),
            ("serve-strict-batch", "strict", True),
            ("serve-balanced", "balanced", False),
        ):
            runs[run] = {
                name: await serve(profile, entries, batch) for name, entries in corpora.items()
            }
        return runs

    loop = asyncio.new_event_loop()
    try:
        # The explain processes run while the in-process server does its part.
        explained = loop.run_in_executor(None, explain, tmp, corpora)
        served = loop.run_until_complete(served_runs())
        explain_results = loop.run_until_complete(explained)
    finally:
        loop.close()
    served["explain-strict"] = explain_results
    result = Outcome(
        planted={run: served[run]["planted"] for run in RUNS},
        utility={run: served[run]["utility"] for run in RUNS},
    )
    write_reports(result)
    return result


# ------------------------------------------------------------------------------- judging


def leaks(entry: Planted, forwarded: Forwarded | None) -> list[str]:
    return [] if forwarded is None else found_needles(forwarded.text(), entry.needles)


def where(forwarded: Forwarded, needle: str) -> list[str]:
    """Names of the forwarded parameters (or headers) a needle survives in."""
    places = [k for k, v in forwarded.params().items() if finds(v, needle)]
    places += [f"header {k}" for k, v in forwarded.headers.items() if finds(v, needle)]
    return places or ["(across parameters)"]


def arrived_value(entry: Utility, forwarded: Forwarded | None) -> str | None:
    """The value in the entry's slot as Google reads it; None when the slot is gone."""
    if forwarded is None:
        return None
    params = forwarded.params()
    family = entry.family
    if family == "dl path":
        dl = params.get("dl")
        return None if dl is None else unquote(urlsplit(dl).path)
    if family.startswith("pr1."):
        key = family.removeprefix("pr1.")
        tokens = params.get("pr1", "").split("~")
        return next((t[2:] for t in tokens if t[:2] == key), None)
    return params.get(family)


def expected_value(entry: Utility) -> str:
    return unquote(entry.value) if entry.family == "dl path" else entry.value


def utility_changes(results: Results) -> list[tuple[Utility, str | None]]:
    changed = []
    for entry in UTILITY:
        got = arrived_value(entry, results[entry.id])
        if got != expected_value(entry):
            changed.append((entry, got))
    return changed


def family_group(family: str) -> str:
    return "ep.*" if family.startswith("ep.") else family


def write_reports(result: Outcome) -> None:
    REPORTS.mkdir(exist_ok=True)
    lines = ["Planted personal values that reached Google (needles found after normalising)", ""]
    for run, results in result.planted.items():
        leaking = [(e, leaks(e, results[e.id])) for e in PLANTED]
        leaking = [(e, found) for e, found in leaking if found]
        lines.append(f"== {run}: {len(leaking)} of {len(PLANTED)} entries leak")
        by_family: dict[str, list[tuple[Planted, list[str]]]] = defaultdict(list)
        for e, found in leaking:
            by_family[e.family].append((e, found))
        for family in sorted(by_family):
            lines.append(f"  {family} ({len(by_family[family])})")
            for e, found in by_family[family]:
                fwd = results[e.id]
                assert fwd is not None
                places = sorted({p for n in found for p in where(fwd, n)})
                lines.append(f"    {e.id:<58} {e.encoding:<26} in {', '.join(places)}")
        dropped = [e.id for e in PLANTED if results[e.id] is None]
        lines.append(f"  beacons dropped whole: {len(dropped)}")
        lines.append("")
    (REPORTS / "privacy-planted.txt").write_text("\n".join(lines), encoding="utf-8")

    lines = ["Non-personal values that did not arrive unchanged", ""]
    for run, results in result.utility.items():
        changed = utility_changes(results)
        rate = 1 - len(changed) / len(UTILITY)
        lines.append(f"== {run}: {rate:.1%} unchanged ({len(UTILITY) - len(changed)} of "
                     f"{len(UTILITY)})")
        totals = Counter(family_group(e.family) for e in UTILITY)
        bad = Counter(family_group(u.family) for u, _ in changed)
        for family in sorted(totals):
            ok = totals[family] - bad[family]
            lines.append(f"  {family:<12} {ok / totals[family]:7.1%}  ({ok}/{totals[family]})")
        for u, got in changed:
            lines.append(f"    {u.id:<48} {u.value!r} -> {got!r}")
        lines.append("")
    (REPORTS / "privacy-utility.txt").write_text("\n".join(lines), encoding="utf-8")


# ------------------------------------------------------------------------------- the tests


# The transfer report's "never forwarded" items, by the corpus's kind of value.
REPORT_LABELS = {
    "email": "An e-mail address",
    "phone": "A phone number",
    "card": "A payment card number (Luhn)",
    "iban": "An IBAN",
}
NATIONAL_ID = "A national identity number"


def admitted_by_report(run: str, entry: Planted) -> bool:
    """Whether the transfer report says, for this run's profile, that a value of this kind
    can pass in this entry's field. Only shape-checked technical fields qualify: gtag fills
    them with digit runs (page ids, container ids) that a planted number is made to look like,
    and the issue's rule is that they cannot carry one *or the report names them*."""
    if entry.family not in SHAPES:
        return False
    label = REPORT_LABELS.get(entry.kind, NATIONAL_ID)
    return entry.family in report_passes("balanced" if "balanced" in run else "strict")[label]


@functools.cache
def report_passes(profile: str) -> dict[str, list[str]]:
    """The report's "never forwarded" items: label -> the fields it says a value passes."""
    report = build_report(from_mapping(proxy_config(profile, "stdout"), env={})).to_json()
    return {n["item"]: n["passes"] for n in report["never_forwarded"]}


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("entry", PLANTED, ids=[e.id for e in PLANTED])
def test_planted_value_never_reaches_google(outcome: Outcome, run: str, entry: Planted) -> None:
    forwarded = outcome.planted[run][entry.id]
    found = leaks(entry, forwarded)
    if found and admitted_by_report(run, entry):
        return  # named by the report (observe/report/forwarded.py, "Never forwarded"): see its note
    if found:
        assert forwarded is not None
        places = sorted({p for n in found for p in where(forwarded, n)})
        pytest.fail(
            f"{entry.id} [{entry.family}, {entry.encoding}]: {found} reached Google "
            f"in {', '.join(places)}",
            pytrace=False,
        )


@pytest.mark.parametrize("run", RUNS)
def test_non_personal_values_arrive_unchanged(outcome: Outcome, run: str) -> None:
    changed = utility_changes(outcome.utility[run])
    rate = 1 - len(changed) / len(UTILITY)
    listing = "\n".join(f"  {e.id} [{e.family}]: {e.value!r} -> {got!r}" for e, got in changed)
    assert rate >= UTILITY_PASS_RATE, (
        f"{run}: only {rate:.1%} of {len(UTILITY)} non-personal values arrived unchanged "
        f"(test-output/privacy-utility.txt):\n{listing}"
    )


@pytest.mark.parametrize("run", RUNS)
def test_needles_are_absent_from_clean_beacons(outcome: Outcome, run: str) -> None:
    """The control: no needle occurs by chance in a forwarded beacon without planted data,
    so a found needle is the planted value and not the rest of the request."""
    needles = sorted({n for e in PLANTED for n in e.needles})
    clean = [(e.id, f) for e, f in ((e, outcome.utility[run][e.id]) for e in UTILITY) if f]
    assert len(clean) > len(UTILITY) // 2
    chance = [(eid, n) for eid, fwd in clean for n in found_needles(fwd.text(), needles)]
    assert not chance


def test_corpora_are_large_and_cover_every_slot_and_encoding() -> None:
    assert len(PLANTED) >= 220 and len(UTILITY) >= 160
    assert len({e.id for e in PLANTED}) == len(PLANTED)
    assert len({e.id for e in UTILITY}) == len(UTILITY)
    families = {e.family for e in PLANTED}
    assert {"dt", "dl path", "dl query", "dl host", "dr", "dp", "ep.search_term", "ep.link_url",
            "ep.page_location", "pr1.nm", "pr1.br", "pr1.ca", "pr1.c2", "pr1.c3", "pr1.id",
            "pr1.c2~c3", "_p", "gtm", "tag_exp", "_et", "ul", "cu"} <= families
    assert any(f.startswith("epn.") for f in families)
    encodings = {e.encoding for e in PLANTED}
    assert {"plain", "pct1", "pct2", "pct3", "html-decimal", "html-named", "html-hex",
            "fullwidth-at", "fullwidth-at-dot", "small-at", "zero-width-space",
            "zero-width-joiner", "soft-hyphen", "bidi-controls", "spaces-around-at",
            "bracket-at", "paren-at", "word-at", "bracket-at-dot", "word-at-dot", "base64",
            "base64url"} <= encodings
    assert {"dt", "dl path"} <= {e.family for e in UTILITY}
    assert {"pr1.nm", "pr1.br", "pr1.ca", "pr1.id", "pr1.va"} <= {e.family for e in UTILITY}


def test_every_allow_listed_name_is_configured() -> None:
    """A planted ep./epn. parameter the configuration drops would pass without proving a thing."""
    entries: list[Entry] = [*PLANTED, *UTILITY]
    for entry in entries:
        if entry.family.startswith(("ep.", "epn.")):
            assert entry.family.split(".", 1)[1] in EVENT_PARAMS, entry.id


@pytest.mark.parametrize("entry", PLANTED, ids=[e.id for e in PLANTED])
def test_needles_are_really_planted(entry: Planted) -> None:
    """Each needle is distinctive (6+ letters or digits) and is in the value as planted; a
    base64 entry's decoded fragments are the exception (only its base64 text is there)."""
    for needle in entry.needles:
        assert len(normalise(needle)) >= 6, needle
        assert finds(entry.value, needle) or entry.encoding.startswith("base64"), needle
    assert any(finds(entry.value, n) for n in entry.needles)


# The oracle itself: it must see through every disguise the corpus uses, and no further.
DISGUISED = [
    ("zelda.quux%252540example.org", "zeldaquux"),
    ("zelda.quux%2540example.org", "zelda.quux"),
    ("%7A%65%6C%64%61.quux@example.org", "zelda"),
    ("zelda.quux&#64;example.org", "zeldaquux"),
    ("zelda.quux&amp;commat;example.org", "zeldaquux"),
    ("ZELDA.QUUX\uff20EXAMPLE\uff0eORG", "zeldaquux"),
    ("zel\u200bda\u200d.qu\u00adux\u202e@example.org", "zeldaquux"),
    ("zelda [dot] quux [at] example", "zeldadotquux"),
    ("4111 1111.1111-1111", "4111111111111111"),
    ("tag_exp=4111~1111~1111~1111", "4111111111111111"),
    (" ".join(["\uff14\uff11\uff11\uff11", "\uff11" * 4, "\uff11" * 4, "\uff11" * 4]),
     "4111111111111111"),
    ("dl=https%3A%2F%2Fx.example%2Freset%2FzQ8v-Kp3L_9xTq", "zq8vkp3l9xtq"),
    ("+49\u00a030\u00a012345678", "3012345678"),
]
CLEAN = [
    ("dt=Order%20for%20%5Bemail%5D", "zeldaquux"),
    ("zelda.[email]", "zeldaquux"),
    ("4111 **** **** 1111", "4111111111111111"),
    ("dl=https://www.example.com/reset/:token", "zq8vkp3l"),
]


@pytest.mark.parametrize(("haystack", "needle"), DISGUISED)
def test_oracle_sees_through_encodings(haystack: str, needle: str) -> None:
    assert finds(haystack, needle)


@pytest.mark.parametrize(("haystack", "needle"), CLEAN)
def test_oracle_does_not_find_what_was_removed(haystack: str, needle: str) -> None:
    assert not finds(haystack, needle)


def test_oracle_rejects_an_empty_needle() -> None:
    with pytest.raises(ValueError):
        finds("anything", "@.-")


def test_the_harness_would_fail_on_a_leak() -> None:
    """A forwarded request carrying a planted value, however encoded, is reported."""
    entry = next(e for e in PLANTED if e.id == "email-dt-pct3")
    params = beacon_params(entry)
    leaked = Forwarded(encode(params), "", {"User-Agent": UA})
    assert leaks(entry, leaked) == entry.needles
    assert where(leaked, entry.needles[0]) == ["dt"]
    scrubbed = Forwarded(urlencode({**params, "dt": "Order confirmation for [email]"}), "", {})
    assert leaks(entry, scrubbed) == []
