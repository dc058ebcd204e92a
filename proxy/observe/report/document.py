"""One document, two renderings: the report as Markdown (for a DPIA or record of processing)
or as a standalone HTML page, and ``render`` for the CLI and the admin port. Text marks code
with backticks; nothing else is markup."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxy.observe.report.facts import code
from proxy.observe.report.sections import probability

if TYPE_CHECKING:
    from proxy.observe.report.transfer import Report

_CODE = re.compile(r"`([^`]+)`")


@dataclass(frozen=True, slots=True)
class _Block:
    kind: str  # h1 | h2 | p | ul | table
    text: str = ""
    header: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    items: tuple[str, ...] = ()


def _yes(value: bool | None, none: str = "not decided here") -> str:
    return none if value is None else ("yes" if value else "no")


def document(r: Report) -> list[_Block]:
    blocks: list[_Block] = []

    def h2(text: str) -> None:
        blocks.append(_Block("h2", text))

    def p(text: str) -> None:
        blocks.append(_Block("p", text))

    def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
        blocks.append(_Block("table", header=tuple(header), rows=tuple(tuple(x) for x in rows)))

    blocks.append(_Block("h1", "Transfer report: analytics-proxy → Google Analytics 4"))
    p(f"Derived from the compiled configuration by `analytics-proxy report` (version "
      f"{r.version}, policy fingerprint `{r.fingerprint}`): it states what the proxy's code "
      f"does with this configuration. Privacy profile: `{r.profile}`.")

    met = [c for c in r.cnil_conditions if c.met]
    unmet = [c for c in r.cnil_conditions if not c.met]
    primary = r.collisions[0]
    consent, endpoint = r.consent, r.endpoint
    defaults = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in consent["defaults"].items())
    h2("Summary")
    table(("", "This configuration"), [
        ("Recipient", f"Google Analytics 4, measurement IDs {code(r.measurement_ids)}"),
        ("Endpoint", f"`{endpoint['url']}`, {endpoint['why']}"),
        ("Region", endpoint["region"] + (" (dry run)" if endpoint["dry_run"] else "")),
        ("Consent", f"{len(consent['sources'])} consent sources; GPC: {consent['gpc']}, "
                    f"DNT: {consent['dnt']}; without a signal: {defaults}"),
        ("Pseudonym", f"{r.pseudonym['bits']} bits, new salt every {r.pseudonym['rotation']}; "
                      f"a visitor shares its pseudonym with probability "
                      f"{probability(primary.p_shared)} at {primary.daily_visitors:,} visitors "
                      f"a day ({primary.basis})"),
        ("Location sent", f"`{r.location['mode']}`: {r.location['sent']}"),
        ("Server-side events", r.measurement_protocol["summary"]),
        ("CNIL conditions", f"{len(met)} of {len(r.cnil_conditions)} met"
         + (f"; not met: {', '.join(str(c.id) for c in unmet)}" if unmet else "")),
    ])

    h2("CNIL proxy conditions")
    p("The seven conditions CNIL sets for an analytics proxy (June 2022), in its order, each "
      "judged from the compiled policy.")
    table(("#", "Condition", "Met", "Why"),
          [(str(c.id), c.title, _yes(c.met), c.why) for c in r.cnil_conditions])
    p("Framing conditions:")
    table(("Condition", "Met", "Why"), [
        (fr["title"], _yes(fr["met"], "n/a (dry run)" if endpoint["dry_run"] and "EU" in
                           fr["title"] else "not decided here"), _cap(fr["why"]))
        for fr in r.framing
    ])

    h2("What leaves, in what form")
    p("Every parameter Google can receive from the proxy, and what the proxy does to it. "
      "Anything not listed here is dropped.")
    table(("Parameter(s)", "Treatment", "Sent to Google"),
          [(f"`{f.label}`", f.treatment, _cap(f.form)) for f in r.forwarded_fields])
    p("Headers of the request to Google (no other header is sent):")
    table(("Header", "Treatment", "Sent to Google"),
          [(f"`{f.label}`", f.treatment, _cap(f.form)) for f in r.headers])

    h2("Never forwarded")
    p("The never-forwarded list of the privacy requirements, checked against this "
      "configuration, then every parameter this configuration drops.")
    table(("Item", "Holds", "How"),
          [(n.item, _yes(n.holds), _cap(n.why)) for n in r.never_forwarded])

    h2("Consent")
    p(f"Sources read on every beacon, in order: {code(consent['sources'])}. The rule:")
    blocks.append(_Block("ul", items=tuple(_cap(s) + "." for s in consent["rule"])))
    p(_cap(consent["regime_lookup"]) + ".")
    regimes = consent["regimes"]
    table(("Regime", "Where", "Without a signal"), [
        ("opt-in", _where(regimes["opt_in"]), consent["defaults"]["opt_in"]),
        ("opt-out", _where(regimes["opt_out"]), consent["defaults"]["opt_out"]),
        ("other", "every other country", consent["defaults"]["other"]),
        ("unknown", "country not known", consent["defaults"]["unknown"]),
    ])

    h2("Pseudonymous client id")
    ps = r.pseudonym
    p(f"{ps['algorithm']}; the salt changes every {ps['rotation']} and is destroyed when its "
      "window ends, so pseudonyms do not link across windows. Collisions are stated at "
      f"{ps['volume']}. {ps['formula']}; {ps['window_note']}.")
    table(("Visitors a day", "Basis", "Per window", "P(a visitor shares its pseudonym)",
           "Expected visitors sharing", "Expected distinct pseudonyms"),
          [(f"{c.daily_visitors:,}", c.basis, f"{c.visitors_per_window:,}",
            probability(c.p_shared), f"{c.colliding:.3g}", f"{c.distinct:,.0f}")
           for c in r.collisions])

    h2("Location")
    loc = r.location
    p(f"`privacy.location.mode: {loc['mode']}`: {loc['sent']}. CNIL condition 1: "
      f"{'met' if loc['meets_condition_1'] else 'not met'}.")

    mp = r.measurement_protocol
    h2("Server-side events (Measurement Protocol)")
    p(_cap(mp["summary"]) + ".")
    if mp["enabled"]:
        p(f"Authentication: {mp['authentication']}. Consent: {mp['consent']}. Each field, and "
          "what the request to Google carries (headers: `User-Agent: analytics-proxy/<version>`"
          " and `Content-Type: application/json` only):")
        table(("Field", "Treatment", "Sent to Google"),
              [(f["field"] if " " in f["field"] else f"`{f['field']}`", f["treatment"],
                _cap(f["form"])) for f in mp["fields"]])
    return blocks


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _where(regime: dict[str, Any]) -> str:
    configured, codes = regime["configured"], regime["codes"]
    text = code(configured) if configured else "nowhere"
    return text + (f" ({len(codes)} codes)" if len(codes) != len(configured) else "")


def _md_inline(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(blocks: Sequence[_Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if b.kind == "h1":
            out.append(f"# {b.text}")
        elif b.kind == "h2":
            out.append(f"## {b.text}")
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "ul":
            out.append("\n".join(f"- {_md_inline(i)}" for i in b.items))
        else:
            lines = [
                "| " + " | ".join(_md_inline(h) for h in b.header) + " |",
                "|" + "|".join("---" for _ in b.header) + "|",
                *("| " + " | ".join(_md_inline(c) for c in row) + " |" for row in b.rows),
            ]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


_STYLE = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;max-width:72rem;margin:2rem auto;
padding:0 1rem;color:#1b1b1b}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1rem}
th,td{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}code{font-size:.9em;background:#f3f3f3;padding:0 .2em;
overflow-wrap:anywhere}td.yes{color:#1a6b1a;font-weight:600}td.no{color:#a31515;font-weight:600}
"""


def _html_inline(text: str) -> str:
    return _CODE.sub(r"<code>\1</code>", html.escape(text, quote=True))


def html_page(blocks: Sequence[_Block], title: str) -> str:
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
    ]
    for b in blocks:
        if b.kind in ("h1", "h2", "p"):
            out.append(f"<{b.kind}>{_html_inline(b.text)}</{b.kind}>")
        elif b.kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_html_inline(i)}</li>" for i in b.items)
                       + "</ul>")
        else:
            out.append("<table><thead><tr>"
                       + "".join(f"<th>{_html_inline(h)}</th>" for h in b.header)
                       + "</tr></thead><tbody>")
            for row in b.rows:
                out.append("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>")
            out.append("</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _html_cell(text: str) -> str:
    css = f' class="{text}"' if text in ("yes", "no") else ""
    return f"<td{css}>{_html_inline(text)}</td>"


def render(report: Report, fmt: str) -> str:
    """``md`` | ``html`` | ``json``."""
    if fmt == "md":
        return report.to_markdown()
    if fmt == "html":
        return report.to_html()
    if fmt == "json":
        import json

        return json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n"
    raise ValueError(f"unknown format {fmt!r}")
