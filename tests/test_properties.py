"""Property tests over generated beacons: what leaves never carries a personal value, and
no input raises out of the pipeline."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import parse_qsl, quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config import from_mapping
from proxy.pipeline import IncomingRequest, Pipeline
from proxy.sanitize.pii import PiiScrubber
from proxy.sanitize.policy import compile_policy
from proxy.state.pseudonym import Pseudonymizer
from proxy.state.salts import MemoryState

TID = "G-TEST1234"
CLIENT_IP = "198.51.100.77"
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")

PROFILES = {
    profile: from_mapping(
        {
            "measurement_ids": [TID],
            "privacy": {
                "profile": profile,
                "event_params": ["plan", "percent_scrolled"],
                "user_properties": ["tier"],
                "url_query_allowlist": ["page"],
            },
        },
        env={},
    )
    for profile in ("strict", "balanced")
}
# Built once: compiling a pipeline loads the User-Agent rules, which is start-up work.
PIPELINES = {
    profile: Pipeline(config, Pseudonymizer(MemoryState(), bits=32, rotation=86400))
    for profile, config in PROFILES.items()
}
ALLOWED = {
    profile: set(compile_policy(config.privacy).table) | {"npa", "_uip"}
    for profile, config in PROFILES.items()
}

known_names = st.sampled_from(
    sorted(
        ALLOWED["balanced"]
        | {"uid", "_uip", "ur", "sst.uc", "ep.email", "up.crm_id", "em", "_fplc", "gclid", "x"}
    )
)
emails = st.emails()
texty = st.one_of(
    st.text(max_size=40),
    emails.map(lambda e: f"contact {e} now"),
    st.sampled_from(
        ["4111 1111 1111 1111", "GB82 WEST 1234 5698 7654 32", "+44 20 7946 0958", CLIENT_IP]
    ),
)
urls = st.builds(
    lambda host, path, q: f"https://{host}/{path}?{q}",
    st.sampled_from(["www.example.com", "shop.example.org"]),
    st.text(max_size=30),
    texty,
)
values = st.one_of(texty, urls)
params = st.dictionaries(known_names, values, max_size=12)


def encode(p: dict[str, str]) -> str:
    return "&".join(f"{quote(k)}={quote(v)}" for k, v in p.items())


@st.composite
def requests(draw: st.DrawFn) -> tuple[IncomingRequest, dict[str, str], list[dict[str, str]]]:
    cid = draw(st.sampled_from(["1141082648.1693483972", "abc.def", "x" * 30]))
    shared = {"v": "2", "tid": TID, "cid": cid, **draw(params)}
    shared["v"], shared["tid"], shared["cid"] = "2", TID, cid
    lines = draw(st.lists(params, max_size=3))
    for line in lines:
        line.pop("v", None), line.pop("tid", None)
    body = "\n".join(encode(line) for line in lines)
    cookie = draw(
        st.sampled_from(
            [
                "analytics_consent=granted",
                f"analytics_consent=granted; _ga=GA1.1.{cid}",
                'CookieControl={"optionalCookies":{"analytics":"accepted"},"interactedWith":true}; '
                "analytics_consent=granted",
            ]
        )
    )
    request = IncomingRequest(
        query=encode(shared),
        body=body.encode(),
        cookie=cookie,
        user_agent=draw(st.text(max_size=80)),
        client_ip=ipaddress.ip_address(CLIENT_IP),
    )
    return request, shared, lines


def forwarded_params(query: str, body: str) -> list[dict[str, str]]:
    out = [dict(parse_qsl(query, keep_blank_values=True))]
    out += [dict(parse_qsl(line, keep_blank_values=True)) for line in body.split("\n") if line]
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=requests(), profile=st.sampled_from(sorted(PROFILES)))
async def test_forwarded_beacon_holds_no_personal_value(
    data: tuple[IncomingRequest, dict[str, str], list[dict[str, str]]], profile: str
) -> None:
    request, shared, _ = data
    pipeline = PIPELINES[profile]
    outcome = await pipeline.process(request)
    if outcome.outbound is None:
        return
    out = outcome.outbound
    text = out.query + "\n" + out.body + "\n" + str(out.headers())
    assert CLIENT_IP not in text
    assert "cookie" not in {k.lower() for k in out.headers()}
    for sent in forwarded_params(out.query, out.body):
        assert "uid" not in sent
        assert sent.get("cid") != shared["cid"]
        assert set(sent) <= ALLOWED[profile], set(sent) - ALLOWED[profile]
        for name, value in sent.items():
            assert not EMAIL.search(value)
            if name == "_uip":  # the configured location: a truncated network, by design
                assert value.endswith(".0")
                continue
            if name == "cid":
                # The proxy's own pseudonym, in GA's "<10 digits>.<10 digits>" shape, which
                # reads as a North American phone number; checked above to differ.
                continue
            assert not PiiScrubber().scrub(value)[1], (name, value)


@settings(max_examples=300, deadline=None)
@given(
    query=st.text(max_size=200),
    body=st.binary(max_size=300),
    cookie=st.one_of(st.none(), st.text(max_size=200)),
    ua=st.one_of(st.none(), st.text()),
)
async def test_no_input_raises_out_of_the_pipeline(
    query: str, body: bytes, cookie: str | None, ua: str | None
) -> None:
    pipeline = PIPELINES["strict"]
    for q in (query, f"v=2&tid={TID}&cid=1.2&{query}"):
        outcome = await pipeline.process(
            IncomingRequest(query=q, body=body, cookie=cookie, user_agent=ua)
        )
        assert outcome.reason != "internal_error"
