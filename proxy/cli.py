"""``analytics-proxy``: ``serve`` the proxy, ``explain`` what it does to a beacon, ``audit
tail`` what it did, ``report`` what leaves for Google.

Every command finds its configuration in the same order: ``--config FILE``, then
``$ANALYTICS_PROXY_CONFIG``, then ``./config/proxy.yaml``, then
``/etc/analytics-proxy/proxy.yaml`` (where the container image puts it)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import gc
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from proxy import __version__
from proxy.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load
from proxy.observe import logs

if TYPE_CHECKING:
    from proxy.observe.explain import BeaconInput

CONFIG_ENV = "ANALYTICS_PROXY_CONFIG"
SYSTEM_CONFIG_PATH = Path("/etc/analytics-proxy/proxy.yaml")
# Looked for in this order when neither --config nor $ANALYTICS_PROXY_CONFIG names a file.
CONFIG_SEARCH = (DEFAULT_CONFIG_PATH, SYSTEM_CONFIG_PATH)
CONFIG_HELP = (f"YAML file (default: ${CONFIG_ENV}, else ./{DEFAULT_CONFIG_PATH}, "
               f"else {SYSTEM_CONFIG_PATH})")
# What a shell reports for a process that SIGPIPE ended (128 + 13), as `git log | head` does.
EXIT_BROKEN_PIPE = 141


def config_path(given: str | None, env: Mapping[str, str] | None = None) -> Path:
    """The file a command reads: ``--config``, ``$ANALYTICS_PROXY_CONFIG``, then the first of
    ``CONFIG_SEARCH`` that exists. A file named explicitly is never second-guessed."""
    if given:
        return Path(given)
    named = (os.environ if env is None else env).get(CONFIG_ENV)
    if named:
        return Path(named)
    for path in CONFIG_SEARCH:
        if path.is_file():
            return path
    looked = ", ".join(f"./{p}" if not p.is_absolute() else str(p) for p in CONFIG_SEARCH)
    raise ConfigError(f"no configuration file: give --config FILE or set {CONFIG_ENV} "
                      f"(looked for {looked})")


def _load_config(path: Path) -> Config:
    from proxy.mp.credentials import load_credentials
    from proxy.pipeline import check_compiles

    config = load(path)
    check_compiles(config)
    load_credentials(os.environ, config.measurement_ids)  # a half-set pair stops start-up
    return config


def _serve(args: argparse.Namespace) -> int:
    path = config_path(args.config)
    config = _load_config(path)
    logs.setup(config.log.level)
    if args.workers > 1:
        from proxy.server.workers import supervise

        # The workers read the file this process found, whatever their environment says.
        return supervise(args.workers, functools.partial(_run_worker, str(path)))
    _run_one(config, reuse_port=False, serve_admin=True)
    return 0


def _run_worker(config_file: str, index: int) -> None:
    """One of ``--workers N`` (a spawned process): load, then serve on the shared port."""
    config = _load_config(Path(config_file))
    logs.setup(config.log.level)
    _run_one(config, reuse_port=True, serve_admin=index == 0)


def _run_one(config: Config, *, reuse_port: bool, serve_admin: bool) -> None:
    import uvloop

    from proxy.server import serve

    async def main() -> None:
        # Start-up objects (compiled policy, UA rules, ...) live for the whole run: keep the
        # cyclic collector from rescanning them on every collection under load.
        gc.collect()
        gc.freeze()
        await serve.run(config, reuse_port=reuse_port, serve_admin=serve_admin)

    uvloop.run(main())


def _explain(args: argparse.Namespace) -> int:
    from proxy.observe.explain import BeaconInput, Explainer, har_beacons, load_jsonl

    config = _load_config(config_path(args.config))
    explainer = Explainer(config)
    if args.jsonl or args.har:
        path = args.jsonl or args.har
        try:
            with open(path, encoding="utf-8") as fh:
                found = load_jsonl(fh) if args.jsonl else har_beacons(json.load(fh))
                beacons = list(_visited_from(found, args))
        except OSError as exc:
            raise SystemExit(f"explain: cannot read {path}: {exc.strerror}") from None
        except (ValueError, KeyError, AttributeError, TypeError) as exc:
            kind = "JSON lines" if args.jsonl else "a HAR file (JSON)"
            raise SystemExit(f"explain: {path} is not {kind}: {exc}") from None
    elif args.url:
        headers: dict[str, str] = {}
        for header in args.header:
            name, sep, value = header.partition(":")
            if not sep:
                raise SystemExit(f"--header {header!r}: expected 'Name: value'")
            name, value = name.strip(), value.strip()
            if name.lower() == "cookie" and name in headers:
                value = f"{headers[name]}; {value}"  # repeated Cookie lines are all read
            elif name.lower() in ("x-forwarded-for", "forwarded") and name in headers:
                value = f"{headers[name]}, {value}"  # every forwarding line, in order
            headers[name] = value
        beacons = [
            BeaconInput(
                url=args.url,
                method=args.method,
                body=args.body or "",
                cookie=args.cookie,
                headers=headers,
                country=args.country,
                region=args.region,
                client_ip=args.client_ip,
            )
        ]
    else:
        raise SystemExit("explain: give a URL, --jsonl FILE or --har FILE")

    async def run() -> None:
        color = sys.stdout.isatty() and not args.json
        for index, beacon in enumerate(beacons):
            outcome = await explainer.explain(beacon)
            if args.json or args.jsonl:
                print(json.dumps(explainer.to_json(outcome), ensure_ascii=False))
            else:
                if index:
                    print("\n" + "─" * 72)
                print(explainer.to_text(outcome, color))

    asyncio.run(run())
    return 0


def _visited_from(beacons: Iterable[BeaconInput], args: argparse.Namespace
                  ) -> Iterator[BeaconInput]:
    """``--client-ip``, ``--country`` and ``--region`` for every beacon of a HAR (which
    records none of them) or of a JSONL file whose line leaves them out."""
    for beacon in beacons:
        # A line's own country keeps its own region: never FR with the flag's CA.
        place = (beacon.country, beacon.region) if beacon.country else (
            args.country, beacon.region or args.region)
        yield dataclasses.replace(beacon, client_ip=beacon.client_ip or args.client_ip,
                                  country=place[0], region=place[1])


def _report(args: argparse.Namespace) -> int:
    from proxy.observe.report import build_report, render

    config = _load_config(config_path(args.config))
    observed = None
    if args.daily_visitors is None and config.state.redis_url:
        observed = asyncio.run(_observed_visitors(config.state.redis_url))
    sys.stdout.write(render(build_report(config, args.daily_visitors, observed), args.format))
    return 0


async def _observed_visitors(url: str) -> int | None:
    """The shared daily count the replicas keep in Redis (None when unreachable or empty)."""
    from redis.asyncio import Redis

    from proxy.state.visitors import DailyVisitors

    client = Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        found = await DailyVisitors(client).observed()
    except Exception:
        print("analytics-proxy: the observed volume is unavailable (Redis)", file=sys.stderr)
        return None
    finally:
        await client.aclose()
    return found[0] if found else None


def _snippet(args: argparse.Namespace) -> int:
    from proxy.observe.metrics import Metrics
    from proxy.tag.tracker import Tracker

    config = _load_config(config_path(args.config))
    if not config.tag.tracker:
        raise SystemExit("analytics-proxy: tag.tracker is false: /t.js is not served")
    public_url = config.tag.public_url or f"http://127.0.0.1:{config.listen.port}"
    tracker = Tracker(config, Metrics())
    for tag_id in config.measurement_ids:
        print(f'<script async src="{tracker.url(public_url, tag_id)}"></script>')
        print("<script>window.dataLayer = window.dataLayer || []; "
              "function gtag(){dataLayer.push(arguments);} "
              f"gtag('js', new Date()); gtag('config', '{tag_id}');</script>")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _audit_tail(args: argparse.Namespace) -> int:
    from proxy.observe.audit import tail

    config = _load_config(config_path(args.config))
    if args.limit < 1:
        raise SystemExit("audit tail: --limit must be at least 1")
    return tail(config, url=args.url, follow=args.follow, limit=args.limit, as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="analytics-proxy", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help=CONFIG_HELP)
    serve.add_argument("--workers", type=int, default=1,
                       help="processes sharing the port (SO_REUSEPORT); default 1")
    serve.set_defaults(func=_serve)
    explain = sub.add_parser("explain", help="show what the proxy does to a beacon")
    explain.add_argument("url", nargs="?", help="the beacon's URL (…/g/collect?v=2&…)")
    explain.add_argument("--config", help=CONFIG_HELP)
    explain.add_argument("--cookie", help="the Cookie header the browser sent")
    explain.add_argument("--header", action="append", default=[], metavar="'K: V'")
    explain.add_argument("--country", help="visitor's country (ISO 3166 alpha-2); with "
                         "--jsonl or --har, for every beacon that does not say")
    explain.add_argument("--region", help="visitor's first-level subdivision, e.g. CA")
    explain.add_argument("--client-ip", help="visitor's address (used in memory only); with "
                         "--jsonl or --har, for every beacon that does not say")
    explain.add_argument("--method", default="POST", choices=["GET", "POST"])
    explain.add_argument("--body", help="request body: one event per line")
    explain.add_argument("--json", action="store_true", help="one JSON object per beacon")
    explain.add_argument("--jsonl", metavar="FILE", help="many beacons, one JSON object a line")
    explain.add_argument("--har", metavar="FILE", help="every /g/collect request of a HAR file")
    explain.set_defaults(func=_explain)
    report = sub.add_parser("report", help="what leaves for Google, and the CNIL conditions")
    report.add_argument("--config", help=CONFIG_HELP)
    report.add_argument("--format", choices=["md", "html", "json"], default="md",
                        help="md (for a DPIA, the default), html (a standalone page) or json")
    report.add_argument("--daily-visitors", type=_positive, metavar="N",
                        help="daily volume to state pseudonym collisions at "
                        "(default: an illustrative volume, said so)")
    report.set_defaults(func=_report)
    snippet = sub.add_parser("snippet", help="the tags that load /t.js, versioned, per id")
    snippet.add_argument("--config", help=CONFIG_HELP)
    snippet.set_defaults(func=_snippet)
    audit = sub.add_parser("audit", help="the privacy audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    tail = audit_sub.add_parser(
        "tail", help="print recent audit records (Redis stream, else the admin port's ring)"
    )
    tail.add_argument("--config", help=CONFIG_HELP)
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
    tail.add_argument("--limit", "-n", type=int, default=20, help="records shown first (20)")
    tail.add_argument("--json", action="store_true", help="one JSON object per record")
    tail.add_argument("--url", help="admin address of a running proxy (default from config); "
                      "read it instead of the Redis stream")
    tail.set_defaults(func=_audit_tail)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"analytics-proxy: configuration error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`explain --json ... | head -1`): stop quietly, and point
        # stdout at /dev/null so the interpreter's last flush at exit cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
