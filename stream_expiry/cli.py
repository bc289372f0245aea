"""The ``stream-expiry`` command line: run, explain, replay, demo, sink.

Every command that talks to Kafka finds its brokers in ``--bootstrap-servers``, else the
config file, else ``STREAM_EXPIRY_BOOTSTRAP_SERVERS``. Errors of ours (``StreamExpiryError``)
print one line that says what to do next and exit 2; nothing prints a traceback at a user
who only mistyped a path.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import TYPE_CHECKING

import anyio
import orjson

from stream_expiry.config import Config, ConfigError, load_config
from stream_expiry.errors import ConfigurationError, StreamExpiryError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["main"]

log = logging.getLogger("stream_expiry")

BOOTSTRAP_ENV = "STREAM_EXPIRY_BOOTSTRAP_SERVERS"

_DESCRIPTION = """\
Real-time retention enforcement on Kafka: every conversation, session and error event is
stamped with the expiry its retention policy gives it at creation time, and a tombstone is
published on expiry.tombstones the moment it expires, for downstream stores to delete it.

Start here:
  stream-expiry demo                      broker, service, traffic and a store, all local
  stream-expiry explain --org acme --category conversation
                                          which TTL applies to a record, and why
  stream-expiry run --config expiry.toml  the service
"""


def _add_common(p: argparse.ArgumentParser, *, kafka: bool = True) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file (see README: Configuration)")
    if kafka:
        p.add_argument(
            "--bootstrap-servers",
            metavar="HOST:PORT[,...]",
            help=f"Kafka brokers; default: the config file's bootstrap_servers, else ${BOOTSTRAP_ENV}",
        )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def bootstrap_from(args: argparse.Namespace, config: Config) -> str:
    """Brokers from the flag, else the config file, else the environment."""
    servers = (
        getattr(args, "bootstrap_servers", None)
        or config.bootstrap_servers
        or os.environ.get(BOOTSTRAP_ENV)
    )
    if not servers:
        raise ConfigurationError(
            "no Kafka brokers given: pass --bootstrap-servers HOST:PORT, set bootstrap_servers "
            f"in the config file or {BOOTSTRAP_ENV}, or try --embedded-broker"
        )
    return str(servers)


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config)


# -- run ----------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    from stream_expiry.runner import run_service

    config = _load(args)
    if args.state_dir:
        config = dataclasses.replace(config, state_dir=args.state_dir)
    return anyio.run(run_service, config, args)


# -- explain ------------------------------------------------------------------------------


def _cmd_explain(args: argparse.Namespace) -> int:
    from stream_expiry.policy import PolicyBook, render_explain_table
    from stream_expiry.timeutil import parse_ts

    config = _load(args)
    at = None if args.at is None else parse_ts(int(args.at) if args.at.isdigit() else args.at)
    book = PolicyBook(config, os.environ)
    if args.category not in config.categories:
        raise ConfigurationError(
            f"unknown category {args.category!r}; configured: {', '.join(config.categories)}"
        )
    result = book.explain(
        category=args.category, org=args.org, bot=args.bot, env=args.env, at_ms=at
    )
    if args.json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        for warning in book.env_warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(render_explain_table(result))
    return 0


# -- replay -------------------------------------------------------------------------------


def _cmd_replay(args: argparse.Namespace) -> int:
    from stream_expiry.replay import run_replay

    config = _load(args)
    return anyio.run(run_replay, config, bootstrap_from(args, config), args)


# -- demo ---------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from stream_expiry.demo import run_demo

    return anyio.run(run_demo, args)


# -- archive ------------------------------------------------------------------------------


def _add_archive_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    archive = sub.add_parser(
        "archive",
        help="keep every stamp in gzip JSON-lines files (archive before purge)",
        description="Consume expiry.stamped with its own consumer group and append every stamp "
        "to DIR/<org>/<YYYY-MM-DD of created_at>.jsonl.gz, and every deletion (null) as an "
        "erasure marker to DIR/<org>/erasures.jsonl.gz; files are fsynced before offsets are "
        "committed. 'archive purge --dir DIR' removes the erased records from the files. "
        "See README: Archive.",
    )
    archive.add_argument("action", nargs="?", choices=["run", "purge"], default="run")
    archive.add_argument("--dir", required=True, metavar="DIR", help="the archive directory")
    _add_common(archive)
    archive.add_argument(
        "--group-id",
        default="stream-expiry-archive",
        help="consumer group (default stream-expiry-archive)",
    )
    archive.set_defaults(func=_cmd_archive)


def _cmd_archive(args: argparse.Namespace) -> int:
    from stream_expiry import archive

    if args.action == "purge":
        result = archive.purge(args.dir)
        print(
            f"purged {result.lines_removed} erased lines from {result.files_rewritten} files; "
            f"{result.lines_kept} lines kept"
        )
        return 0
    config = _load(args)
    return anyio.run(
        lambda: archive.serve_archive(
            bootstrap_from(args, config),
            args.dir,
            topic=config.topics.stamped,
            group_id=args.group_id,
        )
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-expiry",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the service",
        description="Consume the input topics with a consumer group, stamp every record with its "
        "expiry and publish tombstones when they are due. Run several with one group_id to scale "
        "out; Ctrl-C or SIGTERM stops within seconds with everything processed committed.",
    )
    _add_common(run)
    run.add_argument(
        "--embedded-broker",
        action="store_true",
        help="start a local in-memory broker (Tansu) and use it",
    )
    run.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the durable index lives (default: config state_dir)",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on http://0.0.0.0:PORT/metrics (counters, lag histogram)",
    )
    run.set_defaults(func=_cmd_run)

    explain = sub.add_parser(
        "explain",
        help="show which TTL applies to a record, and why",
        description="Resolve the effective TTL of a record from every configured source: the "
        "smallest positive candidate wins, 0 means never. Reads the config file and this "
        "process's environment variables.",
    )
    _add_common(explain, kafka=False)
    explain.add_argument("--category", required=True, help="e.g. conversation, session, error")
    explain.add_argument("--org", required=True, help="organisation id")
    explain.add_argument("--bot", default="_", help="bot id (default: _)")
    explain.add_argument("--env", default="live", choices=["live", "draft"])
    explain.add_argument(
        "--at", metavar="TS", help="creation time to resolve at (RFC 3339 or epoch ms; default now)"
    )
    explain.add_argument("--json", action="store_true", help="print the contract's JSON object")
    explain.set_defaults(func=_cmd_explain)

    replay = sub.add_parser(
        "replay",
        help="re-derive every expiration from the input topics",
        description="Read the input topics from the beginning (or --since), re-derive each "
        "record's expiry with the given config and the policy history, compare with the current "
        "stamps on expiry.stamped and apply the changes (unless --dry-run) to expiry.stamped and "
        "to the index in the config's state_dir. The service using that state_dir, running or "
        "restarted, then tombstones the records now due at once and the others at their new "
        "times. Run it where the service's state_dir is.",
    )
    _add_common(replay)
    replay.add_argument("--since", metavar="TS", help="only records created at or after TS")
    replay.add_argument("--dry-run", action="store_true", help="count and show, change nothing")
    replay.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    replay.add_argument(
        "--sample", type=int, default=10, metavar="N", help="changed records to show (default 10)"
    )
    replay.set_defaults(func=_cmd_replay)

    demo = sub.add_parser(
        "demo",
        help="broker, service, traffic and a store, all local",
        description="Starts an in-memory broker, the service, a traffic generator (several orgs "
        "and bots, the three categories, TTLs of a few seconds) and a SQLite store, shows live "
        "progress, and ends with a summary: counts, expiry lag, and early deletions (must be 0).",
    )
    demo.add_argument(
        "--duration", type=float, default=20.0, metavar="SECONDS", help="traffic time (default 20)"
    )
    demo.add_argument(
        "--rate", type=int, default=200, metavar="N", help="events per second (default 200)"
    )
    demo.add_argument(
        "--state-dir", metavar="DIR", help="keep the state and the store here (default: a temp dir)"
    )
    demo.add_argument(
        "--log-level",
        default="ERROR",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="service log level (default ERROR: the demo's malformed events are on purpose)",
    )
    demo.set_defaults(func=_cmd_demo)
    _add_archive_parser(sub)

    try:
        from stream_expiry.sinks.command import add_sink_parser
    except ImportError:  # pragma: no cover - the sinks package is part of the distribution
        pass
    else:
        add_sink_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, getattr(args, "log_level", "INFO")),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ConfigError, StreamExpiryError) as exc:
        print(f"stream-expiry: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:  # raised through an anyio task group
        ours = _our_error(group)
        if ours is None:
            raise
        print(f"stream-expiry: {ours}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _our_error(group: BaseExceptionGroup[BaseException]) -> StreamExpiryError | None:
    """The first of our errors inside a (nested) exception group (the other leaves are
    usually the cancellations it caused), or None when it holds none of ours."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    ours = [e for e in leaves if isinstance(e, StreamExpiryError)]
    return ours[0] if ours else None


if __name__ == "__main__":
    sys.exit(main())
