"""The rewrite on Google's real tag: every Google host it would contact now names the proxy,
and the result is still a script a JavaScript engine accepts."""

from __future__ import annotations

import difflib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from proxy.tag.rewrite import LOADED_HOSTS, RULES, google_hosts_in, rewrite
from tests.tag.gtag import gtag_js

PUBLIC = "https://stats.example.com"


def test_no_google_host_is_left_in_a_url() -> None:
    original = gtag_js()
    assert len(google_hosts_in(original)) > 10  # the test would mean nothing otherwise
    result = rewrite(original, PUBLIC)
    assert result.misses == ()
    assert google_hosts_in(result.text) == []


def test_hosts_the_tag_builds_urls_from_name_the_proxy() -> None:
    text = rewrite(gtag_js(), PUBLIC).text
    for host in LOADED_HOSTS:
        assert f'"{host}"' not in text
    # The shapes the tag glues together at run time, as they read after the rewrite.
    assert '"https://stats.example.com/g/collect"' in text  # "https://"+a+".google-analytics…"
    assert "https://stats.example.com/ads/ga-audiences?" in text
    assert 'cj(21,"stats.example.com")' in text  # "https://"+cj(21,…)+"/td?id=…"
    assert '"https://stats.example.com/fls/activityi;"' in text


@pytest.mark.parametrize(
    "kept",
    [
        '"tagassistant.google.com"',  # a referrer comparison, not a host the tag contacts
        '"cct.google"',
        'h!=="google.com"',
        "https://www.youtube.com/iframe_api",  # only loaded by pages that embed YouTube
        "https://www.facebook.com/tr/",  # a host the tag recognises, never calls
    ],
)
def test_names_the_tag_only_compares_against_are_left_alone(kept: str) -> None:
    original = gtag_js()
    assert kept in original
    assert kept in rewrite(original, PUBLIC).text


def test_the_report_lists_the_hosts_rewritten() -> None:
    hosts = set(rewrite(gtag_js(), PUBLIC).hosts)
    assert {
        "<region>.google-analytics.com",
        "<region>.analytics.google.com",
        "stats.g.doubleclick.net",
        "www.google.<cc>",
        "www.google.com",
        "www.googletagmanager.com",
        "googleads.g.doubleclick.net",
        "www.googleadservices.com",
        "pagead2.googlesyndication.com",
    } <= hosts


def test_a_port_in_the_public_url_is_kept_where_the_tag_takes_whole_urls() -> None:
    text = rewrite(gtag_js(), "http://127.0.0.1:8080/").text
    assert '"http://127.0.0.1:8080/g/collect"' in text
    assert 'cj(21,"127.0.0.1:8080")' in text


def test_lookalike_hosts_are_not_google() -> None:
    script = (
        'a="https://google.com.evil.example/x";b="https://notgoogle.com/y";'
        'c="https://www.google.co.uk/ads";d="https://region1.google-analytics.com/g/collect"'
    )
    text = rewrite(script, PUBLIC).text
    assert "https://google.com.evil.example/x" in text
    assert "https://notgoogle.com/y" in text
    assert f'c="{PUBLIC}/ads"' in text
    assert f'd="{PUBLIC}/g/collect"' in text


def test_a_changed_build_is_reported_as_misses() -> None:
    # A build where the collection URL is written differently: the templated rule finds
    # nothing, and the host glued on at run time is left (residue).
    script = 'var u="https://"+r+".analytics-eu.google-analytics.com/g/collect";'
    result = rewrite(script, PUBLIC)
    names = {rule.name for rule in RULES}
    assert set(result.misses) - {"residue"} <= names
    assert "templated_collection" in result.misses
    assert "residue" in result.misses


def test_the_rewritten_tag_is_still_valid_javascript(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node, "node is needed to parse the rewritten tag (Debian's nodejs)"
    path = tmp_path / "gtag.js"
    path.write_text(rewrite(gtag_js(), PUBLIC).text, encoding="utf-8")
    done = subprocess.run([node, "--check", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_rewrite_changes_nothing_but_hosts() -> None:
    original = gtag_js()
    text = rewrite(original, PUBLIC).text
    # Compare the two scripts piece by piece (split at quotes): every piece that differs
    # named a Google domain before and names the proxy after.
    before, after = original.split('"'), text.split('"')
    google = re.compile(r"google|doubleclick|\.goog\b|https://www\.%/ads/")  # www.% : google.<cc>
    changed = 0
    matcher = difflib.SequenceMatcher(None, before, after, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        changed += 1
        old, new = "\"".join(before[i1:i2]), "\"".join(after[j1:j2])
        assert google.search(old), (old, new)
        assert "stats.example.com" in new and not google.search(new), (old, new)
    assert changed > 20
