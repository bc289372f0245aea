"""The ``stream-expiry`` command line: run, explain, replay, hold, policy, status, history,
archive, rekey, demo, sink.

Every command that talks to Kafka finds its brokers in ``--bootstrap-servers``, else the
config file, else ``STREAM_EXPIRY_BOOTSTRAP_SERVERS`` (the contract's order); every other
setting goes flag > environment > file > default (:mod:`stream_expiry.config`). Errors of ours
(``StreamExpiryError``) and bad arguments print one line that says what to do next, with
the same exit status for the same failure in every command (:mod:`stream_expiry.exits`);
nothing prints a traceback at a user who only mistyped a path.

One function per command (``_cmd_NAME``) and one per parser (``_parser_NAME``): a new command
is two functions and a line in :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import logging
import os
import signal
import sys
import threading
from functools import partial
from typing import TYPE_CHECKING, NoReturn, cast

import anyio
import orjson

from stream_expiry import exits, native
from stream_expiry.cliargs import (
    BOOTSTRAP_ENV,
    WholeWords,
    add_log_options,
    add_metrics_options,
    audit_text,
    bootstrap_from,
    case_note,
    check_category,
    check_ids,
    hold_id,
    hold_key_hex,
    known_bootstrap,
    new_hold_id,
    positive_int,
    seconds,
    timestamp,
    ts_ms,
)
from stream_expiry.config import Config, load_config
from stream_expiry.errors import ConfigurationError, StreamExpiryError
from stream_expiry.logs import (
    configure_logging,
    counted,
    printable,
    resolve_log_options,
    say_failure,
    say_warning,
)
from stream_expiry.metrics import version
from stream_expiry.wakeup import run_woken

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from types import FrameType

    from stream_expiry.holds import HoldBook
    from stream_expiry.kafka_settings import Connection
    from stream_expiry.policy import PolicyBook

__all__ = ["build_parser", "main"]


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


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (and the usual exit status 2), said by the
    (sub)command it was given to, with the nearest option for a typo."""

    # Options of this command's siblings (``sink postgres``'s for ``sink sqlite``), by
    # name: set by parse_args on the command an unknown option was given to.
    elsewhere: Mapping[str, list[str]] = {}

    def error(self, message: str) -> NoReturn:
        message = _no_values(message, self._option_string_actions, self.elsewhere)
        self.exit(exits.USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        """Arguments no command takes are said by the command they were given to (the top
        level said them, and pointed at ``stream-expiry --help``: a trial)."""
        argv = sys.argv[1:] if args is None else list(args)
        parsed, extras = self.parse_known_args(argv, namespace)
        if extras:
            command, siblings = self._deepest(argv)
            if isinstance(command, _Parser):
                elsewhere: dict[str, list[str]] = {}
                for other in siblings:
                    for name in other._option_string_actions:
                        elsewhere.setdefault(name, []).append(other.prog)
                command.elsewhere = elsewhere
            command.error(_UNRECOGNIZED + " ".join(extras))
        return parsed

    def _deepest(
        self, argv: Sequence[str]
    ) -> tuple[argparse.ArgumentParser, list[argparse.ArgumentParser]]:
        """The (sub)command parser ``argv`` names (``sink sqlite ...`` -> ``sink
        sqlite``), and the other sub-commands of its parent (``sink postgres``)."""
        parser: argparse.ArgumentParser = self
        siblings: list[argparse.ArgumentParser] = []
        for word in argv:
            # argparse keeps its sub-commands in a private action; it has no public way.
            subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            if subs and word in subs[0].choices:
                parser = subs[0].choices[word]
                siblings = [p for w, p in subs[0].choices.items() if w != word]
        return parser, siblings


_UNRECOGNIZED = "unrecognized arguments: "


def _no_values(
    message: str, options: Mapping[str, object], elsewhere: Mapping[str, list[str]]
) -> str:
    """argparse's "unrecognized arguments" with the options' names only: it quoted what was
    typed, and a password given as a flag (``--sasl-password=...``, which no command has:
    secrets come from the config file or the environment) went to stderr (a trial). An
    option name close to one the command has gets a "did you mean"; one that a sibling
    command has (``elsewhere``: ``sink postgres --parallel`` given to ``sink sqlite``) is
    said to be that command's."""
    if not message.startswith(_UNRECOGNIZED):
        return message
    words = message.removeprefix(_UNRECOGNIZED).split()
    names = [w.split("=", 1)[0] for w in words if w.startswith("-")]
    shown = [
        word.split("=", 1)[0] + ("=..." if "=" in word else "") if word.startswith("-") else "..."
        for word in words
    ]
    said = (
        _UNRECOGNIZED
        + " ".join(shown)
        + (" (values not shown)" if "..." in " ".join(shown) else "")
    )
    for name in names:
        if name in options:  # this command's own, given before its sub-command
            said += f"; {name}: give it after the command it belongs to"
            continue
        if name in elsewhere:
            *first, last = elsewhere[name]
            owners = f"{', '.join(first)} and {last}" if first else last
            said += f"; {name} is an option of {owners}"
            continue
        close = difflib.get_close_matches(name, [o for o in options if o.startswith("--")], n=1)
        if close:
            said += f"; {name}: did you mean {close[0]}?"
    return said


def _add_common(p: argparse.ArgumentParser, *, kafka: bool = True) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file (see README: Configuration)")
    if kafka:
        p.add_argument(
            "--bootstrap-servers",
            metavar="HOST:PORT[,...]",
            help="Kafka brokers; default: the config file's bootstrap_servers, else "
            f"${BOOTSTRAP_ENV}",
        )
    add_log_options(p)


def load(args: argparse.Namespace) -> Config:
    """The config file with the environment laid over it (flags are each command's)."""
    return load_config(getattr(args, "config", None), environ=os.environ)


def connection_from(args: argparse.Namespace, config: Config) -> Connection:
    """Brokers as :func:`bootstrap_from` finds them, with ``[kafka]`` and the
    ``STREAM_EXPIRY_KAFKA_*`` variables on top; checked before any client starts."""
    from stream_expiry.kafka_settings import connection_for

    return connection_for(bootstrap_from(args, config), config.kafka, os.environ)


@contextlib.contextmanager
def _interrupt_at_once() -> Iterator[None]:
    """SIGTERM handled as Ctrl-C, for a one-shot command (explain, replay, hold, status,
    history): it unwinds, closes its Kafka clients, removes a temporary store, and exits
    130 (interrupted).

    Python's default for SIGTERM ends the process on the spot, which left ``replay``'s and
    ``status``'s temporary store, every live stamp with its ``data``, in the temporary
    directory (erased users' data too) until something cleared /tmp, and ended ``hold``
    and ``history`` with 143. SIGTERM raises SIGINT, so that ``asyncio.run`` cancels the
    command's task where it awaits, as at Ctrl-C, and everything in it unwinds in order (a
    KeyboardInterrupt raised wherever the loop happened to be left clients unclosed, now
    and then). Where the parent has the process ignore Ctrl-C (a background job of a
    script), SIGTERM raises KeyboardInterrupt itself. Run outside the main thread
    (``main()`` called from a thread), it leaves signals alone: only the main thread may
    set a handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def as_ctrl_c(signum: int, frame: FrameType | None) -> None:
        signal.raise_signal(signal.SIGINT)

    ctrl_c = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    before = signal.signal(signal.SIGTERM, as_ctrl_c if ctrl_c else signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


# -- run ----------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    from stream_expiry.runner import run_service
    from stream_expiry.state.dir_lock import check_state_dir

    config = load(args)
    if args.state_dir:
        config = dataclasses.replace(config, state_dir=args.state_dir)
    # Before the embedded broker, the metrics port or a look at Kafka: one line, status 2.
    check_state_dir(config.state_dir)
    return anyio.run(run_service, config, args)


def _parser_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser(
        "run",
        help="run the service",
        description="Consume the input topics with a consumer group, stamp every record with its "
        "expiry and publish tombstones when they are due. Run several with one group_id to scale "
        "out; Ctrl-C or SIGTERM stops within seconds with everything processed committed. "
        "Example: stream-expiry run --config expiry.toml --metrics-port 9400",
        formatter_class=WholeWords,
    )
    _add_common(run)
    run.add_argument(
        "--embedded-broker",
        action="store_true",
        help="start a local in-memory broker (Tansu) and use it: on the port of "
        "--bootstrap-servers 127.0.0.1:PORT, else of the config file's bootstrap_servers, "
        "else of $STREAM_EXPIRY_BOOTSTRAP_SERVERS, if given, else on a free one (the log "
        "names it)",
    )
    run.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the durable index lives (default: $STREAM_EXPIRY_STATE_DIR, else the "
        "config file's state_dir, else ./state in the directory it is started from)",
    )
    add_metrics_options(run)
    run.set_defaults(func=_cmd_run)


# -- explain ------------------------------------------------------------------------------


def _cmd_explain(args: argparse.Namespace) -> int:
    from stream_expiry.durations import format_duration
    from stream_expiry.policy import (
        PolicyBook,
        apply_updates,
        render_explain_table,
        unset_variables,
        updates_left_out,
    )
    from stream_expiry.timeutil import wall_clock_ms

    config = load(args)
    check_ids({"--org": args.org, "--bot": args.bot})
    book = PolicyBook(config, os.environ)
    check_category(args.category, config.categories)
    # What the running service uses: the updates on the policies topic too, whenever the
    # brokers are known by any of the contract's three ways (a config file that names them
    # is a deployment's, and its management-UI TTLs live on that topic alone); --offline
    # is the one way to answer without them, and says so.
    known = None if args.offline else known_bootstrap(args, config)
    if known is not None:
        updates = _policy_updates(args, config, known[1])
        for warning in apply_updates(book, updates, config.topics.policies):
            say_warning(warning)
    # A record created now, unless --at says when: an update dated ahead (``effective_from``
    # next month) is not in force yet, and the answer is what a record gets today.
    at = ts_ms(args.at)
    result = book.explain(
        category=args.category,
        org=args.org,
        bot=args.bot,
        env=args.env,
        at_ms=wall_clock_ms() if at is None else at,
    )
    for warning in book.env_warnings:
        say_warning(warning)
    left_out = None if known else updates_left_out(config.topics.policies, offline=args.offline)
    _say_an_id_meant(book, args, updates_read=known is not None)
    if args.json:
        # The JSON is the contract's; what it leaves out is said beside it, on stderr (a
        # caller reading a TTL of null there was not told the updates were never read).
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
        if left_out is not None:
            print(left_out, file=sys.stderr)
    else:
        print(render_explain_table(result))
        ttl = result.get("ttl_seconds")
        if ttl is not None and args.category in config.sliding:
            # The TTL alone read as the record's life: a session touched all day lived
            # all day under "effective TTL: 30m", and nothing here said why (a trial).
            print(
                f"{args.category} slides ([categories] sliding): each touch moves its expiry "
                f"to the touch's time + {format_duration(int(ttl) * 1000)}, the TTL fixed "
                "at its creation"
            )
        unset = unset_variables(args.category, result)
        if unset is not None:
            print(unset)
        if left_out is not None:
            print(left_out)
    return 0


def _say_an_id_meant(book: PolicyBook, args: argparse.Namespace, *, updates_read: bool) -> None:
    """Warn (stderr; the answer and its JSON stay as they are) of an ``--org`` or
    ``--bot`` that no setting names and that is close to one a setting names, case aside.
    An org or bot no setting names gets what every such org or bot gets, which a
    misspelt one (``acmee``, ``ACME`` for ``acme``; ``Support-Bot`` for ``support-bot``)
    also gets: the answer looked right and was another's (a trial; ``hold place`` said
    so of a bot, explain did not). The bot is checked against the org meant, as
    ``hold place`` does; ``_``, the contract's "no bot", is not checked."""
    where = "config file" + (", policy update" if updates_read else "")
    org_meant = book.org_meant(args.org)
    if org_meant is not None:
        say_warning(
            f"no org or bot setting ({where}) names org {printable(repr(args.org))}, so it "
            f"gets what every such org gets; did you mean {printable(repr(org_meant))}?"
            + case_note("org", args.org, org_meant)
        )
    org = org_meant or args.org
    bot_meant = None if args.bot == "_" else book.bot_meant(org, args.bot)
    if bot_meant is not None:
        say_warning(
            f"no bot setting ({where}) of org {printable(repr(org))} names bot "
            f"{printable(repr(args.bot))}, so it gets what every bot no setting names gets; "
            f"did you mean {printable(repr(bot_meant))}?" + case_note("bot", args.bot, bot_meant)
        )


def _policy_updates(
    args: argparse.Namespace, config: Config, origin: str
) -> tuple[tuple[bytes | None, bytes | None, int], ...]:
    """Every message on the policies topic, for explain; brokers that cannot be read stop
    it with one line that says what to do: an answer without the updates would name a TTL
    the running service does not give, and must never come silently."""
    from aiokafka.errors import KafkaError

    from stream_expiry.errors import BrokerError
    from stream_expiry.replay import policy_updates

    topic = config.topics.policies
    try:
        with _interrupt_at_once(), _library_quiet():
            return run_woken(policy_updates, connection_from(args, config), topic)
    except (BrokerError, KafkaError, OSError) as exc:
        raise BrokerError(
            f"cannot read the runtime policy updates on {topic} (brokers from {origin}), so "
            f"no answer is given: {exc}; or pass --offline to answer from the config file and "
            "the environment alone"
        ) from exc


@contextlib.contextmanager
def _library_quiet() -> Iterator[None]:
    """For a one-shot command (explain, hold, status, history, replay, archive purge):
    aiokafka logs its connection failures itself, and the command's error says the same and
    what to do, so a person reads one line, not two. DEBUG still shows the library's logs.

    The library's records are dropped where they would be printed (the root's handlers),
    not kept from being made: a client's start holds its bootstrap failures back and gives
    their reasons to the command's error (``kafka._start``), which a level raised on the
    library left without them ("Unable to bootstrap", no word of a name that resolves to
    nothing)."""
    if logging.getLogger("aiokafka").getEffectiveLevel() <= logging.DEBUG:
        yield
        return
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(_not_the_library)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(_not_the_library)


def _not_the_library(record: logging.LogRecord) -> bool:
    return not (record.name == "aiokafka" or record.name.startswith("aiokafka."))


def _parser_explain(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    explain = sub.add_parser(
        "explain",
        help="show which TTL applies to a record, and why",
        description="Resolve the effective TTL of a record from every configured source: the "
        "smallest positive candidate wins; a value of 0 (negative or empty too) is no value, so "
        "the other sources, caps and defaults still apply, and with no positive candidate the "
        "record never expires. Reads the config file, this "
        "process's environment variables and, as the running service does, the policy updates "
        "on expiry.policies whenever the brokers are known (--bootstrap-servers, else the "
        "config file's bootstrap_servers, else $STREAM_EXPIRY_BOOTSTRAP_SERVERS); brokers that "
        "cannot be read are an error (exit status 3), never an answer without the updates. "
        "--offline answers without them, and says so. Example: stream-expiry explain "
        "--config expiry.toml --org acme --bot support-bot --env draft --category conversation",
        formatter_class=WholeWords,
    )
    _add_common(explain, kafka=False)
    kafka = explain.add_mutually_exclusive_group()
    kafka.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT[,...]",
        help="Kafka brokers to read the policy updates from; default: the config file's "
        f"bootstrap_servers, else ${BOOTSTRAP_ENV}",
    )
    kafka.add_argument(
        "--offline",
        action="store_true",
        help="do not read the policy updates on expiry.policies (the management UI's org and "
        "bot TTLs): answer from the config file and the environment alone, for use without "
        "Kafka; the answer says they were left out",
    )
    explain.add_argument("--category", required=True, help="e.g. conversation, session, error")
    explain.add_argument("--org", required=True, help="organisation id")
    explain.add_argument("--bot", default="_", help="bot id (default: _)")
    explain.add_argument(
        "--env", default="live", choices=["live", "draft"], help="environment (default: live)"
    )
    explain.add_argument(
        "--at",
        metavar="TS",
        type=timestamp,
        help="creation time to resolve at (RFC 3339 or epoch ms; default now)",
    )
    explain.add_argument("--json", action="store_true", help="print the contract's JSON object")
    explain.set_defaults(func=_cmd_explain)


# -- replay -------------------------------------------------------------------------------


def _cmd_replay(args: argparse.Namespace) -> int:
    from stream_expiry.replay import run_replay

    config = load(args)
    try:
        with _interrupt_at_once(), _library_quiet():
            return run_woken(run_replay, config, connection_from(args, config), args)
    except KeyboardInterrupt:
        # Stopped while it read or published, it said nothing, and what it had published
        # (and what it had not) was left to guess (a trial).
        say_failure(
            "stream-expiry replay: interrupted; "
            + (
                "nothing was published (--dry-run)"
                if args.dry_run
                else "the stamps it published stay published, the rest were not: run it "
                "again to finish (it re-derives every record, so the second run publishes "
                "what the first did not, and no stamp twice)"
            )
        )
        raise


def _parser_replay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    replay = sub.add_parser(
        "replay",
        help="re-derive every expiration under the configured policy",
        description="Re-derive each record's expiry with the given config and the policy "
        "history, from the latest stamps on expiry.stamped (or, with --from-inputs, from the "
        "input topics read from their beginning), compare with the current stamps and, unless "
        "--dry-run, publish the changed stamps on expiry.stamped. A service picks them up "
        "when it (re)starts or takes a partition over (roll the instances after a replay): "
        "it tombstones the records now due at once and the others at their new times. "
        "Memory stays bounded: the stamps are streamed through a temporary on-disk store. "
        "Stop the instances first, or read the README's After replay. "
        "Example: stream-expiry replay --config new.toml --dry-run",
        formatter_class=WholeWords,
    )
    _add_common(replay)
    replay.add_argument(
        "--since", metavar="TS", type=timestamp, help="only records created at or after TS"
    )
    replay.add_argument("--dry-run", action="store_true", help="count and show, change nothing")
    replay.add_argument(
        "--from-inputs",
        action="store_true",
        help="re-derive from the input topics' events instead of expiry.stamped (needs the "
        "input topics' whole history)",
    )
    replay.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="processes that share expiry.stamped's partitions out (default: one per CPU "
        "when the topic holds 500,000 messages or more, else 1); the counts are the same",
    )
    replay.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    replay.add_argument(
        "--sample",
        type=positive_int,
        default=10,
        metavar="N",
        help="changed records to show (default 10)",
    )
    replay.set_defaults(func=_cmd_replay)


# -- hold ---------------------------------------------------------------------------------


def _cmd_hold(args: argparse.Namespace) -> int:
    from stream_expiry.hold_command import run_hold

    config = load(args)
    with _interrupt_at_once(), _library_quiet():
        return run_woken(run_hold, config, connection_from(args, config), args)


def _add_by(verb: argparse.ArgumentParser, does: str) -> None:
    verb.add_argument(
        "--by",
        type=audit_text,
        help=f"who {does} it (a name, a role), audited (default: the user running the command)",
    )


def _parser_hold(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hold = sub.add_parser(
        "hold",
        help="place, release and list legal holds",
        description="A legal hold keeps every record it matches (every field it gives equals "
        "the record's) from deletion: at its expiry and on an erasure request alike. Within a "
        "second of the release of its last matching hold a record is tombstoned, if it is due "
        "by then. Holds live on the compacted expiry.holds topic; placing and releasing are "
        "also written to expiry.audit.",
    )
    verbs = hold.add_subparsers(dest="hold_command", required=True, metavar="ACTION")
    place = verbs.add_parser(
        "place",
        help="place a hold; prints its id",
        formatter_class=WholeWords,
        description="Place a legal hold: every record whose fields equal all those given "
        "(--org, and any of --bot, --env, --category, --record-id) is kept from deletion, at "
        "its expiry and on an erasure request, until the hold is released. The hold is "
        "written to expiry.holds, which every instance of the service follows, and a "
        "hold_placed entry to expiry.audit (the hold's id, its fields, the reason, who placed "
        "it and the time). Prints the hold's id, which `hold release` takes. Org ids are "
        "case-sensitive (a hold on Beta keeps nothing of beta): a warning names the org a "
        "config setting or policy update names close to --org or in another case, or an "
        "active hold names in another case, and the hold is placed all the same. The records "
        "themselves are not read (a scan of expiry.stamped), so an org only records name is "
        "not checked: `stream-expiry status` shows how many records each hold matches. Example: "
        "stream-expiry hold place --org acme --category conversation --reason 'case 2024-117' "
        "--id case-117 --by 'j.doe (legal)'",
    )
    _add_common(place)
    place.add_argument("--org", required=True, help="the organisation (required)")
    place.add_argument("--bot", help="only this bot")
    place.add_argument("--env", choices=["live", "draft"], help="only this environment")
    place.add_argument("--category", help="only this category")
    place.add_argument("--record-id", dest="record_id", help="only this record")
    place.add_argument("--reason", required=True, help="why (a case number, say); audited")
    place.add_argument(
        "--id",
        type=new_hold_id,
        help="the hold's id, 1 to 512 characters; refused while a hold with it is active, "
        "unless the id is in doubt (its latest message cannot be read: `hold list`) "
        "(default: a new random one, hold-...)",
    )
    _add_by(place, "places")
    release = verbs.add_parser(
        "release",
        help="release a hold by its id",
        formatter_class=WholeWords,
        description="Release an active legal hold: its id is nulled on expiry.holds, and a "
        "hold_released entry (the hold's id, fields, reason and placing time; the time of the "
        "release, why and by whom) is written to expiry.audit. Within a second the service "
        "tombstones the records it kept that are due by then and that no other hold keeps. An "
        "id in doubt (its latest message cannot be read, which stops the service's start) is "
        "nulled where it is in doubt too, active or not. An id with no active hold, and not in "
        "doubt, changes nothing (exit status 1). A hold whose key its id cannot be typed as "
        "(a key that is not UTF-8, which is read with U+FFFD for the bad bytes) is released by "
        "the key as hex, as `hold list` shows it: --key-hex. Example: stream-expiry hold "
        "release case-117 --reason 'case closed' --by 'j.doe (legal)'",
    )
    _add_common(release)
    named = release.add_mutually_exclusive_group(required=True)
    named.add_argument(
        "hold_id",
        metavar="ID",
        nargs="?",
        type=hold_id,
        help="the id of the hold to release, as `hold place` printed it or `hold list` shows",
    )
    named.add_argument(
        "--key-hex",
        dest="key_hex",
        metavar="HEX",
        type=hold_key_hex,
        help="instead of ID: the hold's message key as hex, which `hold list` shows for a key "
        "its id cannot be typed as (not UTF-8, control characters, over 512 characters)",
    )
    release.add_argument(
        "--reason",
        dest="release_reason",
        type=audit_text,
        help="why it is released (a case closed, a court order); audited as release_reason "
        "(the entry's reason stays the placement's)",
    )
    _add_by(release, "releases")
    listing = verbs.add_parser(
        "list",
        help="the active holds, and the ids in doubt",
        formatter_class=WholeWords,
        description="Read expiry.holds whole and print a line per active legal hold (its id, "
        "what it matches, when it was placed and why) and per hold id in doubt: one whose "
        "latest message cannot be read, which stops the service's start until the id is "
        "placed again (hold place --id) or released. A hold whose message key its id cannot "
        "be typed as is shown with that key as hex, which `hold release --key-hex` takes. A "
        "holds topic the cluster does not have stops it (exit status 2) rather than reading "
        "as no hold. Example: stream-expiry hold list --config expiry.toml",
    )
    _add_common(listing)
    listing.add_argument("--json", action="store_true", help="one JSON array")
    hold.set_defaults(func=_cmd_hold)


# -- policy -------------------------------------------------------------------------------


def _cmd_policy(args: argparse.Namespace) -> int:
    from stream_expiry.policy_command import run_policy

    config = load(args)
    with _interrupt_at_once(), _library_quiet():
        return run_woken(run_policy, config, connection_from(args, config), args)


def _add_scope(verb: argparse.ArgumentParser) -> None:
    verb.add_argument(
        "--scope",
        required=True,
        choices=["org", "bot", "cap", "default"],
        help="the scope: an org's values, a bot's (in one env), the cap, or the defaults",
    )
    verb.add_argument("--org", help="the organisation (scopes org and bot)")
    verb.add_argument("--bot", help="the bot (scope bot)")
    verb.add_argument(
        "--env", choices=["live", "draft"], help="the bot's environment (scope bot; default: live)"
    )


def _parser_policy(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from stream_expiry.policy_command import ttl_pair

    policy = sub.add_parser(
        "policy",
        help="publish, clear and list the runtime policy updates",
        description="A policy update on the compacted expiry.policies topic gives one scope "
        "(an org, a bot in one env, the cap or the defaults) new TTLs for the records created "
        "from its effective_from on; every instance of the service follows the topic. These "
        "commands key each update by its scope, check it as the service does before anything "
        "is written, and read the topic as the service reads it.",
    )
    verbs = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    setting = verbs.add_parser(
        "set",
        help="publish an update of one scope's TTLs",
        formatter_class=WholeWords,
        description="Publish a policy update: its value as the contract says, keyed by its "
        "scope (org/ORG, bot/ORG/BOT/ENV, cap, default). One the service would reject, or "
        "apply without a value (not a duration) or with a warning (1M, which is minutes), is "
        "refused with the service's reason (exit status 2) and nothing is written. An update "
        "replaces its scope's whole ttl map: the topic is read first, and an update that "
        "leaves out a category the scope has a value for (the config file's included) is "
        "refused unless --keep-others (send those values again unchanged) or --drop-others "
        "(take them away) says what is meant. It applies to records created from "
        "--effective-from (default: now) on; records already stamped keep their expiry "
        "(`replay --since TS` re-derives them). Example: stream-expiry policy set --scope org "
        "--org acme --ttl conversation=14d --ttl session=1d",
    )
    _add_common(setting)
    _add_scope(setting)
    setting.add_argument(
        "--ttl",
        action="append",
        required=True,
        type=ttl_pair,
        metavar="CATEGORY=DURATION",
        help="a category's TTL with its unit (30d, 12h, 90m, 6mo, 2y; a number alone is "
        "refused; 0: no value from this scope), once per category; the cap also takes "
        "max=DURATION",
    )
    setting.add_argument(
        "--effective-from",
        dest="effective_from",
        metavar="TS",
        type=timestamp,
        help="the creation time from which it applies: RFC 3339, a date, or epoch "
        "milliseconds (default: the message's Kafka timestamp, now)",
    )
    others = setting.add_mutually_exclusive_group()
    others.add_argument(
        "--keep-others",
        dest="keep_others",
        action="store_true",
        help="send again, unchanged, the scope's values of the categories not given",
    )
    others.add_argument(
        "--drop-others",
        dest="drop_others",
        action="store_true",
        help="take away the scope's values of the categories not given",
    )
    setting.add_argument("--json", action="store_true", help="one JSON object: what was published")
    clear = verbs.add_parser(
        "clear",
        help="clear a scope back to the config file's values",
        formatter_class=WholeWords,
        description="Publish the null that clears a scope: from the null's Kafka timestamp on, "
        "the scope has the config file's values again, as after a restart once compaction "
        "removed its updates. A scope with no update on the topic (or one cleared already) "
        "changes nothing (exit status 1). Example: stream-expiry policy clear --scope bot "
        "--org acme --bot support-bot --env draft",
    )
    _add_common(clear)
    _add_scope(clear)
    clear.add_argument("--json", action="store_true", help="one JSON object: what was cleared")
    listing = verbs.add_parser(
        "list",
        help="the latest update of each scope, and those the service ignores",
        formatter_class=WholeWords,
        description="Read expiry.policies whole and print, per key, its latest message: the "
        "scope, its ttl map and effective_from, or that it is cleared, and, for a message the "
        "service ignores (a key that names no scope, a value it rejects), why: running "
        "services keep what the scope had before, but once the topic is compacted that "
        "message is all that is left of the scope. A policies topic the cluster does not have "
        "stops it (exit status 2). Example: stream-expiry policy list --config expiry.toml",
    )
    _add_common(listing)
    listing.add_argument("--json", action="store_true", help="one JSON array")
    policy.set_defaults(func=_cmd_policy)


# -- status -------------------------------------------------------------------------------


def _cmd_status(args: argparse.Namespace) -> int:
    from stream_expiry.status import run_status

    config = load(args)
    with _interrupt_at_once(), _library_quiet():
        return run_woken(run_status, config, connection_from(args, config), args)


def _parser_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser(
        "status",
        help="instances running; pending, overdue and held records, legal holds, and lag",
        description="Reads expiry.stamped (the latest stamp of every record), expiry.holds and "
        "the service group's committed offsets and members, and prints: the instances "
        "running (the group's members, with their hosts and partitions where the broker says "
        "them); records pending per category and "
        "the next due time; records overdue (due, not held, not yet tombstoned: the service "
        "is down or behind), and with [archive] required how many of them wait for the "
        "archive (it has not written their latest stamp: the archive is behind or stopped); "
        "active legal holds with how many due records each keeps; the records left of each "
        "topic of [topics] retired (none: it can be removed from retired), and those stamped "
        "from topics [topics] lists neither in inputs nor in retired, which no instance "
        "tombstones; the lag of every input partition; and how far each downstream store "
        "(sink group) is behind: tombstones not applied, since when the oldest waits, and "
        "changelog messages not applied. It answers for the whole deployment, from Kafka alone; "
        "expiry.stamped is streamed through a temporary on-disk store (a few seconds per "
        "million records). Example: stream-expiry status --config expiry.toml "
        "--sink-group stream-expiry-sink-postgres",
        formatter_class=WholeWords,
    )
    _add_common(status)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument(
        "--sink-group",
        action="append",
        metavar="GROUP",
        help="a downstream store's consumer group (a sink's --group-id), to say how many "
        "tombstones it has not applied yet and since when the oldest waits; repeat for each "
        "store (default: the sinks' default groups, stream-expiry-sink-NAME for every "
        "--name, stream-expiry-sink-sqlite and -postgres without one, where they have "
        "committed offsets)",
    )
    status.set_defaults(func=_cmd_status)


# -- history ------------------------------------------------------------------------------


def _cmd_history(args: argparse.Namespace) -> int:
    from stream_expiry.history import run_history

    config = load(args)
    with _interrupt_at_once(), _library_quiet():
        return run_woken(run_history, config, connection_from(args, config), args)


def _parser_history(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    history = sub.add_parser(
        "history",
        help="what happened to one record: stamps, erasure, holds, tombstones, receipts",
        description="Reads expiry.stamped, expiry.tombstones, expiry.receipts, expiry.audit "
        "and expiry.dlq whole and prints, oldest first, every message about one record: its "
        "stamps (TTL, its source, the redacted paths; never its data), the null that ended "
        "each life and why, its tombstones, every store's receipt (once, however many times "
        "it was published), the deletions a legal hold deferred, the holds placed and "
        "released on it, and its rejected input events (an erasure request dead-lettered is "
        "not carried out), and those the service has not read yet (an erasure request still "
        "waiting on an input topic); then the active holds that match it. For an audit: each "
        "evidence topic is "
        "read from its beginning. Example: stream-expiry history --config expiry.toml "
        "--org acme --bot support --category conversation --record-id c-981",
        formatter_class=WholeWords,
    )
    _add_common(history)
    history.add_argument("--org", required=True, help="the organisation (required)")
    history.add_argument("--bot", default="_", help="the bot (default: _)")
    history.add_argument(
        "--env", choices=["live", "draft"], default="live", help="the environment (default: live)"
    )
    history.add_argument("--category", required=True, help="the category (required)")
    history.add_argument(
        "--record-id", dest="record_id", required=True, help="the record's id (required)"
    )
    history.add_argument("--json", action="store_true", help="print one JSON object")
    history.set_defaults(func=_cmd_history)


# -- deletions ----------------------------------------------------------------------------


def _cmd_deletions(args: argparse.Namespace) -> int:
    from stream_expiry.deletions import run_deletions

    config = load(args)
    with _interrupt_at_once(), _library_quiet():
        return run_woken(run_deletions, config, connection_from(args, config), args)


def _parser_deletions(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    deletions = sub.add_parser(
        "deletions",
        help="what the stores deleted in a period, under which rule, and how late",
        description="Reads expiry.receipts whole (every store's receipt of every deletion, "
        "each receipt_id counted once however many times it was published) and prints, by "
        "store, the rows deleted in the period by rule (ttl, explicit: an erasure request, "
        "sweep: the store's safety net) and by category; how long after its due time each "
        "row went (p50, p99 and the longest, with its record key: the due time is the "
        "expiry, or the tombstone's time for an erasure); the late ones by the cause the "
        "service gave (catch_up, late_event, hold, archive); and the tombstones of records "
        "a store never held. For an audit of many records (history tells one record's "
        "whole story). With --rejected it reads expiry.dlq instead and lists the erasure "
        "requests the service rejected (an op delete event dead-lettered for a bad "
        "timestamp, an unknown category ...: carried out nowhere, so no receipt names "
        "them), each with its error code and detail, the record as far as the event can be "
        "read, its ts, event_id and where it was produced. Example: stream-expiry deletions "
        "--config expiry.toml --org acme --since 2026-11-01T00:00:00Z --until "
        "2026-12-01T00:00:00Z Example: stream-expiry deletions --config expiry.toml --org "
        "acme --since 2026-11-01 --until 2026-12-01 --rejected",
        formatter_class=WholeWords,
    )
    _add_common(deletions)
    for part in ("org", "bot", "env", "category"):
        deletions.add_argument(f"--{part}", help=f"only the records of this {part}")
    deletions.add_argument(
        "--since",
        metavar="TS",
        type=timestamp,
        help="only rows deleted at or after TS (--rejected: dead-lettered at or after TS)",
    )
    deletions.add_argument(
        "--until",
        metavar="TS",
        type=timestamp,
        help="only rows deleted before TS (--rejected: dead-lettered before TS)",
    )
    deletions.add_argument(
        "--rejected",
        action="store_true",
        help="list the erasure requests (op delete) the service dead-lettered to expiry.dlq "
        "in the period, with why, not the deletions; --json prints them as one JSON object",
    )
    out = deletions.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON object")
    out.add_argument(
        "--receipts",
        action="store_true",
        help="print the receipts counted, one JSON object a line (an export), not the counts",
    )
    deletions.set_defaults(func=_cmd_deletions)


# -- archive ------------------------------------------------------------------------------


def _parser_archive(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    archive = sub.add_parser(
        "archive",
        help="keep every stamp in gzip JSON-lines files (archive before purge)",
        description="Consume expiry.stamped and expiry.tombstones with its own consumer group; "
        "append every stamp to DIR/<org>/<YYYY-MM-DD of created_at>.jsonl.gz, and every "
        "erasure request (an explicit delete's null, or its tombstone) as an erasure marker "
        "to DIR/<org>/erasures.jsonl.gz; expiries erase nothing. Files are fsynced before "
        "offsets are committed. With [archive] required = true in the service's config, "
        "nothing is purged before this command has archived it. 'archive purge --dir DIR' removes the erased "
        "records from the files, and the erasure markers once no erased data can come back "
        "(give it the service's --config: its marker_grace, [topics] and [archive] "
        "marker_margin decide when); run it on a schedule. See README: Archive. "
        "Example: stream-expiry archive --dir /srv/expiry-archive --config expiry.toml",
        formatter_class=WholeWords,
    )
    archive.add_argument(
        "action",
        nargs="?",
        choices=["run", "purge"],
        default="run",
        help="run (the default): keep archiving until SIGINT or SIGTERM; purge: remove the "
        "erased records and the markers past their time from --dir, once, and exit",
    )
    archive.add_argument("--dir", required=True, metavar="DIR", help="the archive directory")
    archive.add_argument(
        "--without-holds",
        action="store_true",
        help="purge: do not read the legal holds from Kafka (by default an erased record "
        "an active hold matches stays in the archive until the hold's release, and a purge "
        "that cannot read the holds, or finds a hold id in doubt, stops)",
    )
    _add_common(archive)
    archive.add_argument(
        "--group-id",
        default=None,
        help="consumer group (default: [archive] group_id, else stream-expiry-archive)",
    )
    archive.set_defaults(func=_cmd_archive)


def _cmd_archive(args: argparse.Namespace) -> int:
    from stream_expiry import archive

    config = load(args)
    # Before Kafka is asked anything: a wrong --dir is the user's to fix (status 2).
    archive.check_directory(args.dir, existing=args.action == "purge")
    if args.action == "purge":
        holds = None if args.without_holds else _purge_holds(args, config)
        # The service's marker_grace and topic settings: the archive's markers must outlive
        # the service's own (README: Archive).
        result = archive.purge(args.dir, archive.MarkerTerms.of(config), holds=holds)
        held = (
            f"; {counted(result.lines_held, 'erased line')} kept under a legal hold, purged "
            "after its release"
            if result.lines_held
            else ""
        )
        print(
            f"purged {counted(result.lines_removed, 'erased line')} from "
            f"{counted(result.files_rewritten, 'file')}; {counted(result.lines_kept, 'line')} "
            f"left in {'it' if result.files_rewritten == 1 else 'them'}; "
            f"{counted(result.markers_dropped, 'erasure marker')} past "
            f"{'its' if result.markers_dropped == 1 else 'their'} time dropped, "
            f"{result.markers_kept} kept{held}"
        )
        return 0
    brokers = connection_from(args, config)
    return anyio.run(
        partial(
            archive.serve_archive,
            brokers,
            args.dir,
            topic=config.topics.stamped,
            tombstones=config.topics.tombstones,
            group_id=args.group_id or config.archive.group_id,
            # A killed archive holds its successor until its session ends: the service's.
            session_ms=config.session_timeout_ms,
            prepare=partial(archive.ensure_read_topics, brokers, config),
        )
    )


def _purge_holds(args: argparse.Namespace, config: Config) -> HoldBook:
    """The legal holds an ``archive purge`` keeps the erased lines of, read whole from the
    cluster. Refused (exit 2) while a hold id's latest message cannot be read, as a
    service's start is: what that id holds is unknown, and read as "no hold" the purge
    erased the archived lines it was meant to keep, perhaps their last copy. No flag reads
    such an id as holding nothing (that is the loss itself): a person settles it with
    ``hold place --id`` or ``hold release`` in seconds; ``--without-holds`` stays the one
    way to purge without the holds, for an archive no hold can concern."""
    from stream_expiry.control import refuse_holds_in_doubt
    from stream_expiry.hold_command import read_holds

    brokers = connection_from(args, config)
    with _library_quiet():
        holds = run_woken(
            partial(
                read_holds,
                config,
                brokers,
                must_exist=True,
                otherwise=", or --without-holds if no hold can concern what it does",
            )
        )
    refuse_holds_in_doubt(
        holds,
        config.topics.holds,
        lost="the purge would erase the archived lines each was meant to keep",
        started="Purged now",
        then="purge again",
    )
    return holds


# -- rekey --------------------------------------------------------------------------------


def _cmd_rekey(args: argparse.Namespace) -> int:
    from stream_expiry.cliargs import metrics_host, metrics_port
    from stream_expiry.rekey import Rekeyer, serve_rekey, targets_for

    config = load(args)
    targets = targets_for(args.sources, args.suffix)
    if args.group_id == config.group_id:
        raise ConfigurationError(
            f"--group-id {args.group_id} is the service's consumer group: the two would share "
            "the input partitions; give rekey a group of its own"
        )
    rekeyer = Rekeyer(config, connection_from(args, config), targets, group_id=args.group_id)
    port = metrics_port(args.metrics_port, os.environ)
    host = metrics_host(args.metrics_host, os.environ)
    # Not quiet, as run and sink are not: a long run's library warnings are worth seeing
    # (a client's start holds its own failures back and says them in the one error).
    return anyio.run(serve_rekey, rekeyer, port, host)


def _parser_rekey(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rekey = sub.add_parser(
        "rekey",
        help="copy input topics keyed by record, for producers that key otherwise",
        description="The service keeps each record with the input partition its events "
        "arrive on, so every event of a record must have one key. When producers key by "
        "something else (an org, an event id) or by nothing, run this beside the service: it "
        "reads each --from topic in its own consumer group and writes every event, bytes and "
        "headers unchanged (plus expiry-rekeyed-from: topic[partition]@offset), to "
        "TOPIC.by-record keyed by its record; an event the service would reject goes to the "
        "dead-letter topic, with the contract's headers naming where it was produced. Then "
        "list the .by-record topics in [topics] inputs instead of the producers' topics. "
        "Offsets are committed once every message of a batch is acknowledged: a crash sends "
        "events again, which changes nothing downstream, and loses none. Run as many as you "
        "like with one --group-id: they share the partitions. Stops on SIGINT or SIGTERM. "
        "See README: Producers that do not key by record. Example: stream-expiry rekey "
        "--config expiry.toml --from conversations --from sessions --from errors",
        formatter_class=WholeWords,
    )
    _add_common(rekey)
    rekey.add_argument(
        "--from",
        dest="sources",
        action="append",
        required=True,
        metavar="TOPIC",
        help="a topic the producers write to (repeat for each)",
    )
    rekey.add_argument(
        "--suffix",
        default=".by-record",
        help="what the re-keyed copy's name adds to its source's (default: .by-record)",
    )
    rekey.add_argument(
        "--group-id",
        default="stream-expiry-rekey",
        help="its consumer group, other than the service's (default: stream-expiry-rekey)",
    )
    add_metrics_options(rekey)
    rekey.set_defaults(func=_cmd_rekey)


# -- demo ---------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from stream_expiry.demo import run_demo

    return anyio.run(run_demo, args)


def _parser_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        help="broker, service, traffic and a store, all local",
        description="Starts an in-memory broker, the service, a traffic generator (several orgs "
        "and bots, the three categories, TTLs of a few seconds) and a SQLite store, shows live "
        "progress, and ends with a summary: counts, expiry lag, and early deletions (must be 0). "
        "Ctrl-C ends it early, with the summary of what happened so far. "
        "Example: stream-expiry demo --duration 60 --rate 500",
        formatter_class=WholeWords,
    )
    demo.add_argument(
        "--duration",
        type=seconds,
        default=20.0,
        metavar="SECONDS",
        help="traffic time (default 20; 0: start, stop and summarise)",
    )
    demo.add_argument(
        "--rate",
        type=positive_int,
        default=200,
        metavar="N",
        help="events per second (default 200)",
    )
    demo.add_argument(
        "--state-dir", metavar="DIR", help="keep the state and the store here (default: a temp dir)"
    )
    # ERROR by default: the demo's malformed events are on purpose.
    add_log_options(demo, default_level="ERROR")
    demo.set_defaults(func=_cmd_demo)
    _parser_archive(sub)


# -- the parser and main --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stream-expiry",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"stream-expiry {version()}, {native.describe()}",
    )
    sub = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",  # of _Parser, whose error() is ours
        parser.add_subparsers(dest="command", required=True, metavar="COMMAND"),
    )
    _parser_run(sub)
    _parser_explain(sub)
    _parser_replay(sub)
    _parser_hold(sub)
    _parser_policy(sub)
    _parser_status(sub)
    _parser_history(sub)
    _parser_deletions(sub)
    _parser_rekey(sub)
    _parser_demo(sub)
    from stream_expiry.sinks.command import add_sink_parser

    add_sink_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        level, fmt = resolve_log_options(
            args.log_level,
            args.log_format,
            os.environ,
            default_level=args.default_log_level,
        )
        configure_logging(level, fmt)
        return func(args)
    except StreamExpiryError as exc:
        return _fail(args, exc)
    except BaseExceptionGroup as group:  # raised through an anyio task group
        ours = _our_error(group)
        if ours is None:
            if _only_interrupts(group):
                return exits.INTERRUPTED
            raise
        return _fail(args, ours)
    except KeyboardInterrupt:
        return exits.INTERRUPTED
    except BrokenPipeError:
        _output_gone()
        return exits.OUTPUT_CLOSED


def _output_gone() -> None:
    """The reader of stdout went away (``status | head``): nothing more can be said, and
    Python's own flush of stdout at exit must not print a traceback about it either."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _fail(args: argparse.Namespace, exc: StreamExpiryError) -> int:
    say_failure(f"stream-expiry {args.command}: {exc}")
    return exits.status_of(exc)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves


def _our_error(group: BaseExceptionGroup[BaseException]) -> StreamExpiryError | None:
    """The first of our errors inside a (nested) exception group (the other leaves are
    usually the cancellations it caused), or None when it holds none of ours."""
    ours = [e for e in _leaves(group) if isinstance(e, StreamExpiryError)]
    return ours[0] if ours else None


def _only_interrupts(group: BaseExceptionGroup[BaseException]) -> bool:
    return all(isinstance(e, KeyboardInterrupt) for e in _leaves(group))


if __name__ == "__main__":
    sys.exit(main())
