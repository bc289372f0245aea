"""Thin adapters over aiokafka: topic creation, producers and consumers with our defaults.

aiokafka's exceptions are translated into :class:`BrokerError` at this edge (the factories,
:func:`ensure_topics` and :func:`broker_errors` for the calls made on a client), so the rest
of the service speaks one error vocabulary and need not import ``aiokafka.errors``. Every
client is built from one :class:`~stream_expiry.kafka_settings.Connection` (brokers, TLS,
SASL); a bare bootstrap string still works and means plaintext. Defaults, measured on
Kafka-protocol brokers: new groups read from ``earliest`` (``latest`` is unreliable on some
brokers and loses data on all of them), and the idempotent producer stays off because not
every Kafka-protocol broker supports it. Consumers read committed data only
(``read_committed``): input, policy and hold topics are written by users' producers, and
an exactly-once one (Kafka Streams, Debezium) writes in transactions, whose aborted
records must not delete, stamp or hold anything, and whose open ones are not data yet. A
partition then ends, for a reader, at its last stable offset (:func:`stable_end`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import ssl
import time
import zlib
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import anyio
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    InconsistentGroupProtocolError,
    InvalidSessionTimeoutError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    RebalanceInProgressError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    UnknownMemberIdError,
    UnsupportedSaslMechanismError,
    for_code,
)
from aiokafka.helpers import create_ssl_context

from stream_expiry.errors import (
    BrokerError,
    BrokerUnavailableError,
    ConfigurationError,
    leaves,
)
from stream_expiry.kafka_settings import (
    MAX_MESSAGE_BYTES,
    Brokers,
    Connection,
    as_connection,
    bootstrap_addresses,
    no_passphrase,
    topic_configs,
)

if TYPE_CHECKING:
    from collections.abc import (
        AsyncGenerator,
        AsyncIterator,
        Callable,
        Iterable,
        Iterator,
        Mapping,
    )

    from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor

    from stream_expiry.config import Config

__all__ = [
    "BATCH_BYTES",
    "LagGauges",
    "OutputBuffer",
    "OwnedPartitions",
    "abandon_join",
    "admin_client",
    "batch_bytes",
    "broker_errors",
    "check_created",
    "client_options",
    "cluster_id",
    "consumer",
    "counting_partitions",
    "crc32_partitioner",
    "ensure_config_topics",
    "ensure_topics",
    "key_partition",
    "known_partition_counts",
    "mapped",
    "mark_seen",
    "message_limits",
    "missing_topics",
    "partition_counts",
    "partitions_of",
    "producer",
    "read_to_end",
    "readable_end",
    "request_rejoin",
    "seen",
    "size_limits",
    "stable_end",
    "stable_ends",
    "standby_said",
    "topic_config_values",
    "topic_ends",
    "topic_names",
    "topic_partitions",
]

DEFAULT_PARTITIONS = 4
# A producer's record batches, per partition: fewer bytes when a topic it writes takes less
# (:func:`batch_bytes`).
BATCH_BYTES: Final = 256 * 1024
# How long a producer's batch may wait for its acks (retries included) before it fails.
PRODUCER_REQUEST_TIMEOUT_MS: Final = 30_000
STALL_S = 60.0  # a topic read to its end that stops moving for this long is an error
COMPACTED = {"cleanup.policy": "compact"}
# A failed SCRAM exchange reaches aiokafka 0.14 as a server-final message without "v", and
# its client raises KeyError('v') out of start(); anything else it raises there is a KafkaError.
_START_ERRORS = (KafkaError, KeyError, ssl.SSLError)
# Not marked retriable by aiokafka, yet only mean "the broker or the group was away for a while".
_TRANSIENT = (
    KafkaTimeoutError,
    CommitFailedError,
    RebalanceInProgressError,
    IllegalGenerationError,
    UnknownMemberIdError,
)


def client_options(brokers: Brokers) -> dict[str, Any]:
    """aiokafka's connection options (shared by producers, consumers and admin clients)."""
    conn = as_connection(brokers)
    sec = conn.security
    options: dict[str, Any] = {
        "bootstrap_servers": conn.bootstrap_servers,
        "security_protocol": sec.security_protocol,
    }
    if sec.uses_ssl:
        try:
            options["ssl_context"] = create_ssl_context(
                cafile=sec.ssl_cafile,
                certfile=sec.ssl_certfile,
                keyfile=sec.ssl_keyfile,
                password=no_passphrase,
            )
        except (ssl.SSLError, OSError, ValueError) as exc:
            files = ", ".join(
                f"{key} {getattr(sec, key)!r} ({sec.origin(key)})"
                for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
                if getattr(sec, key) is not None
            )
            raise ConfigurationError(
                f"cannot load the TLS files {files or '(system CAs)'}: {exc}; they must be "
                "PEM files (the key unencrypted, matching the certificate)"
            ) from None
    if sec.uses_sasl:
        options["sasl_mechanism"] = sec.sasl_mechanism
        options["sasl_plain_username"] = sec.sasl_username
        options["sasl_plain_password"] = sec.sasl_password
    return options


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return "the broker refused the SASL authentication"
    return repr(exc)


# Kafka answers a member whose partition assignors none of the group's members share with
# InconsistentGroupProtocolError: the broker is there, the group id is taken by something else.
_FOREIGN_GROUP: Final = (
    "another member of the consumer group offers none of this client's partition assignors "
    "(the service offers range and roundrobin, a sink range): is something else using the "
    "same group id? Give the service, each sink and each tool a group of its own"
)

# Kafka refuses a JoinGroup whose session timeout is outside its brokers' range, which
# config.py cannot know: 6 s to 30 min by default, where the config takes 1 s up (the test
# broker, Tansu, takes any). aiokafka's repr of the error said nothing of the setting.
_SESSION_TIMEOUT: Final = (
    "the brokers refused the consumer group's session timeout ([service] session_timeout, "
    "or $STREAM_EXPIRY_SERVICE_SESSION_TIMEOUT; default 6s): Kafka takes one from its "
    "group.min.session.timeout.ms to its group.max.session.timeout.ms, 6s to 30m unless "
    "the cluster sets them otherwise; set session_timeout within them"
)


async def log_in(conn: Connection, host: str, port: int, timeout_s: float = 5.0) -> None:
    """Connect to one broker as the clients do (TLS, an ApiVersions request, the SASL login)
    and hang up; raises what failed. A broker answers an ApiVersions request before any
    login, and a TLS-terminating proxy completes its handshake whatever is behind it:
    only this tells a refused password, or a dead broker behind a proxy, from a live one."""
    options = client_options(conn)
    keys = ("ssl_context", "security_protocol", "sasl_mechanism")
    logins = {k: options[k] for k in keys if k in options}
    if "sasl_mechanism" in options:
        logins["sasl_plain_username"] = options["sasl_plain_username"]
        logins["sasl_plain_password"] = options["sasl_plain_password"]
    with anyio.fail_after(timeout_s):
        client = await create_conn(
            host,
            port,
            client_id="stream-expiry-probe",
            request_timeout_ms=int(timeout_s * 1000),
            **logins,
        )
    client.close()


def login_refused(exc: BaseException) -> bool:
    """Whether :func:`log_in` failed because the broker refused who the client is: its
    password, its SASL mechanism, or (on the client's side) the broker's certificate.
    Kafka's own clients treat these as fatal, not as an outage to wait out (KIP-152):
    retrying sends the same credentials again, and only the operator can change them."""
    return isinstance(
        exc,
        KeyError | SaslAuthenticationFailed | UnsupportedSaslMechanismError
        | ssl.SSLCertVerificationError,
    )  # fmt: skip


def login_failure(conn: Connection, exc: BaseException, timeout_s: float = 5.0) -> str:
    """What :func:`log_in`'s failure ``exc`` says, for a person."""
    if isinstance(exc, KeyError | SaslAuthenticationFailed):
        return "the broker refused the SASL authentication"
    if isinstance(exc, UnsupportedSaslMechanismError):
        return f"the broker does not offer SASL {conn.security.sasl_mechanism}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the broker's TLS certificate was refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"the TLS handshake with the broker failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        if conn.security.uses_ssl:
            return (
                f"no answer within {timeout_s:g} s to the TLS handshake or the first request: "
                f"is it a TLS listener ({conn.security.security_protocol})?"
            )
        return f"no answer within {timeout_s:g} s to the first request"
    if isinstance(exc, KafkaConnectionError | ConnectionError):
        return "the connection was dropped without an answer"
    return repr(exc)


async def _login_refusal(conn: Connection, timeout_s: float = 5.0) -> str | None:
    """Why a login to the first bootstrap server that accepts a connection fails, when that
    is TLS or SASL (None otherwise: no server accepted one, or the login succeeds).
    aiokafka only logs that reason and raises "Unable to bootstrap", which said nothing of
    a CA that does not sign the broker's certificate, a host name the certificate does not
    name, a password refused, or a TLS client at a plaintext listener (45 s of silence,
    then "Unable to bootstrap")."""
    async for failure in _logins(conn, timeout_s):
        if failure is None:
            return None  # the login succeeds: the failure was something else
        return login_failure(conn, failure, timeout_s)
    return None


async def _logins(conn: Connection, timeout_s: float) -> AsyncIterator[Exception | None]:
    """For each bootstrap server that accepts a connection, in order, what :func:`log_in`
    raised (None: it logged in); those that accept none are passed over, as the clients
    do, not being a TLS or SASL matter."""
    for host, port in bootstrap_addresses(conn.bootstrap_servers):
        try:
            with anyio.fail_after(timeout_s):
                stream = await anyio.connect_tcp(host, port)
            await stream.aclose()
        except (OSError, TimeoutError):
            continue
        try:
            await log_in(conn, host, port, timeout_s)
        except Exception as exc:
            yield exc
            continue
        yield None


class _LoginRefused(KafkaConnectionError):  # type: ignore[misc]  # aiokafka is untyped
    """The login a client's start was still waiting on, refused when tried on its own."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


# A start with TLS or SASL still connecting after this long has its login tried on its own
# (:func:`_start_blocker`): a TLS client at a plaintext listener waits out the client's
# whole request timeout (40 s) before it fails, and then only says "Unable to bootstrap";
# a trial waited 45 s for "no answer within 5 s to the TLS handshake".
LOGIN_TRIED_AFTER_S: Final = 5.0


# aiokafka logs each bootstrap server it cannot connect to at ERROR ('Unable connect to
# "127.0.0.1:9092": [Errno 111] Connect call failed ...') and then raises "Unable to
# bootstrap from [...]", which gives no reason. A start that failed so printed the
# library's line and then the command's own, which says the same and what to do (run,
# sink and archive, seen: the one-shot commands silence the library instead). A start
# holds those lines back (:class:`_BootstrapFailures`): when it fails, their reasons go
# into its one error; when it succeeds all the same (another server answered) or is
# interrupted, they are logged as they came.
_BOOTSTRAP_FAILURE: Final = 'Unable connect to "%s:%s": %s'
_LIBRARY_LOG: Final = logging.getLogger("aiokafka")


class _BootstrapFailures:
    """The library's bootstrap failures logged while one start runs (its task and the
    tasks it makes see it through :data:`_held`); only while ``holding``."""

    def __init__(self) -> None:
        self.holding = True
        self.records: list[logging.LogRecord] = []

    def reasons(self) -> str:
        said = []
        for record in self.records:
            host, port, err = record.args if isinstance(record.args, tuple) else ("?", "?", "")
            said.append(f"{host}:{port}: {str(err) or type(err).__name__}")
        return ", ".join(said)

    def release(self, *, log_them: bool) -> None:
        self.holding = False
        if log_them:
            for record in self.records:
                _LIBRARY_LOG.handle(record)
        self.records.clear()


_held: contextvars.ContextVar[_BootstrapFailures | None] = contextvars.ContextVar(
    "stream_expiry_bootstrap_failures", default=None
)


def _hold_bootstrap_failure(record: logging.LogRecord) -> bool:
    held = _held.get()
    if held is None or not held.holding or record.msg != _BOOTSTRAP_FAILURE:
        return True
    held.records.append(record)
    return False


_LIBRARY_LOG.addFilter(_hold_bootstrap_failure)


class _Unreachable(KafkaConnectionError):  # type: ignore[misc]  # aiokafka is untyped
    """No bootstrap server could be connected to; ``why`` gives each one's reason."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


async def _start(client: Any, conn: Connection) -> None:
    """:func:`_start_client`, with the library's lines of the bootstrap servers it could
    not connect to held back: a start that fails raises, for the plain "Unable to
    bootstrap", :class:`_Unreachable` with their reasons; other failures to start say
    their own reason, and the lines are dropped; otherwise they are logged."""
    held = _BootstrapFailures()
    token = _held.set(held)
    failed = False
    try:
        await _start_client(client, conn)
    except _START_ERRORS as exc:
        failed = True
        if held.records and type(exc) is KafkaConnectionError:
            raise _Unreachable(held.reasons()) from exc
        raise
    finally:
        _held.reset(token)
        held.release(log_them=not failed)


async def _start_client(client: Any, conn: Connection) -> None:
    """``client.start()``; with TLS or SASL, one still connecting after
    :data:`LOGIN_TRIED_AFTER_S` that no bootstrap server will let log in
    (:func:`_start_blocker`) raises :class:`_LoginRefused` at once, its reason said."""
    sec = conn.security
    if not (sec.uses_ssl or sec.uses_sasl):
        await client.start()
        return
    start = asyncio.ensure_future(client.start())
    try:
        done, _ = await asyncio.wait({start}, timeout=LOGIN_TRIED_AFTER_S)
        if not done:
            why = await _start_blocker(conn)
            if why is not None and not start.done():
                start.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await start
                raise _LoginRefused(why)
        await start
    finally:
        if not start.done():  # cancelled while it connects (Ctrl-C): it must not go on
            start.cancel()


async def _start_blocker(conn: Connection, timeout_s: float = 5.0) -> str | None:
    """Why no start can succeed, when every bootstrap server that accepts a connection
    refuses the login (:func:`login_refused`), fails the TLS handshake, or, with TLS, never
    answers it (a plaintext listener): the first such reason. None when any server logs
    in, or one fails otherwise (a connection dropped, a plaintext request unanswered: a
    dead broker behind a load balancer, an overloaded one), which the start may outlast
    by trying the next server or waiting (a review: the first probe's timeout failed a
    start that another server would have let succeed)."""
    reasons: list[str] = []
    async for failure in _logins(conn, timeout_s):
        blocks = failure is not None and (
            login_refused(failure)
            or isinstance(failure, ssl.SSLError)
            or (conn.security.uses_ssl and isinstance(failure, TimeoutError))
        )
        if failure is None or not blocks:
            return None
        reasons.append(login_failure(conn, failure, timeout_s))
    return reasons[0] if reasons else None


async def _start_failure(what: str, conn: Connection, exc: BaseException) -> BrokerError:
    """:func:`_start_failed`, with the reason when TLS or SASL is what failed."""
    why = None
    sec = conn.security
    if isinstance(exc, _LoginRefused):
        why = exc.why
    elif (sec.uses_ssl or sec.uses_sasl) and isinstance(exc, KafkaConnectionError):
        why = await _login_refusal(conn)
    if why is None and isinstance(exc, _Unreachable):
        why = exc.why
    return _start_failed(what, conn, exc, why)


def _start_failed(
    what: str, conn: Connection, exc: BaseException, why: str | None = None
) -> BrokerError:
    if isinstance(exc, InconsistentGroupProtocolError):
        return BrokerError(f"the {what} could not join its consumer group: {_FOREIGN_GROUP}")
    if isinstance(exc, InvalidSessionTimeoutError):
        return BrokerError(f"the {what} could not join its consumer group: {_SESSION_TIMEOUT}")
    sec = conn.security
    hint = "check that the brokers are up and the bootstrap address"
    if sec.uses_sasl:
        hint += f", and [kafka] ({sec.security_protocol}, {sec.sasl_mechanism} as {sec.sasl_username!r})"
    elif sec.uses_ssl:
        hint += f", and [kafka] ({sec.security_protocol}: the CA and client certificate)"
    else:
        hint += ", and whether the cluster requires TLS or SASL ([kafka] in the config file)"
    return BrokerError(
        f"cannot reach Kafka at {conn.bootstrap_servers}{_default_port_said(conn)} "
        f"({what}: {why or _describe(exc)}); {hint}"
    )


def _default_port_said(conn: Connection) -> str:
    """`` (port 9092 ...)`` when an address gives no port: "cannot reach Kafka at
    localhost" did not say where it had looked (a trial)."""
    try:
        addresses = bootstrap_addresses(conn.bootstrap_servers)
    except ConfigurationError:
        return ""
    entries = [e.strip() for e in conn.bootstrap_servers.split(",")]
    if any(
        p == 9092 and not e.endswith(":9092") for e, (_, p) in zip(entries, addresses, strict=False)
    ):
        return " (port 9092, Kafka's default, where none is given)"
    return ""


@contextlib.contextmanager
def broker_errors(what: str) -> Iterator[None]:
    """Turn aiokafka's errors inside the block into :class:`BrokerError` saying ``what``
    failed (e.g. ``with broker_errors("reading input topics"): await cons.getmany()``)."""
    try:
        yield
    except KafkaError as exc:
        raise mapped(exc, f"{what} failed") from exc


def mark_seen(acks: Iterable[object]) -> None:
    """Mark acks that will not be awaited (after the first one failed, or a cancellation)
    as seen once they are done. aiokafka fails every message of a batch with one
    exception, and asyncio logs each future whose exception nobody retrieved with a
    traceback when it is collected ("Future exception was never retrieved"): one per
    partition of every publish in flight, after every outage."""
    for ack in acks:
        if isinstance(ack, asyncio.Future):
            ack.add_done_callback(seen)


def seen(future: asyncio.Future[Any]) -> None:
    """A done callback that retrieves ``future``'s exception (see :func:`mark_seen`)."""
    if not future.cancelled():
        future.exception()


def transient(exc: KafkaError) -> bool:
    """Whether retrying may cure ``exc``: aiokafka's retriable errors, and a few it does
    not call so (a request that timed out, a group rebalancing)."""
    return exc.retriable or isinstance(exc, _TRANSIENT)


def curable(exc: BaseException) -> bool:
    """Whether every error in ``exc`` (a task group's, perhaps) is one retrying may cure: a
    :class:`BrokerUnavailableError`, or one of ours caused by an error of aiokafka that
    :func:`mapped` calls so (a client that cannot reach the broker at a restart, say)."""
    for leaf in leaves(exc):
        if isinstance(leaf, BrokerUnavailableError):
            continue
        cause = leaf if isinstance(leaf, KafkaError) else leaf.__cause__
        if not isinstance(cause, KafkaError):
            return False
        if not isinstance(mapped(cause, "retry"), BrokerUnavailableError):
            return False
    return True


def mapped(exc: KafkaError, message: str) -> BrokerError:
    """:class:`BrokerUnavailableError` for what retrying may cure, else :class:`BrokerError`."""
    if isinstance(exc, InconsistentGroupProtocolError):
        return BrokerError(f"{message}: {_FOREIGN_GROUP}")
    if isinstance(exc, InvalidSessionTimeoutError):
        return BrokerError(f"{message}: {_SESSION_TIMEOUT}")
    kind = BrokerUnavailableError if transient(exc) else BrokerError
    return kind(f"{message}: {exc!r}")


async def _stop(client: AIOKafkaProducer | AIOKafkaConsumer, failing: bool) -> None:
    """Stop a client; a producer's stop flushes, which fails while the broker is away.
    That failure must not hide the error the block is already leaving with.

    A block left by a cancellation (a task group stopping its reader) stops its client
    all the same, shielded for at most :data:`STOP_TIMEOUT_S`: anyio cancels every await
    in a cancelled scope, so ``stop()`` gave up at its first one and left the client's
    connections open, found later by the garbage collector ("unclosed transport")."""
    if not failing:
        await _stop_now(client, failing=False)
        return
    with anyio.move_on_after(_close_timeout(), shield=True):
        await _stop_now(client, failing=True)


STOP_TIMEOUT_S = 5.0  # each client's close in a forced or failing stop (runner)


class _Closing:
    """When the closes of a stop forced by a signal's grace end (anyio's clock), if one is
    under way."""

    by: float | None = None


_CLOSING = _Closing()


def close_clients_by(deadline: float | None) -> None:
    """Every Kafka client closed in a failing stop from now on ends its close by
    ``deadline`` (anyio's clock), instead of having :data:`STOP_TIMEOUT_S` each; None ends
    that. The runner sets it at a stop signal: its clients close one after another (the
    group's consumer inside the session's producer, inside the control topics' readers),
    and with a broker that does not answer each took its whole 5 s, so a stop said
    "forced after 10 s" ended 15 s after the signal in a trial, and could take 30 s, the
    whole grace an orchestrator gives before its SIGKILL."""
    _CLOSING.by = deadline


def _close_timeout() -> float:
    if _CLOSING.by is None:
        return STOP_TIMEOUT_S
    return max(0.0, min(STOP_TIMEOUT_S, _CLOSING.by - anyio.current_time()))


async def _stop_now(client: AIOKafkaProducer | AIOKafkaConsumer, failing: bool) -> None:
    try:
        if isinstance(client, AIOKafkaConsumer):
            await abandon_join(client)
        await client.stop()
    except KafkaError as exc:
        if not failing:
            raise mapped(exc, "stopping a Kafka client") from exc
    except asyncio.CancelledError:
        # aiokafka's fetcher cancels its pending tasks on close (retries, while the broker
        # is away) and awaits them unguarded, so their CancelledError comes out of stop().
        # Only a cancellation of this task itself is one to pass on.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        if isinstance(client, AIOKafkaConsumer):
            # A consumer has nothing to flush: finish the stop its fetcher broke off. Seen
            # as SIGTERM during an outage ending `run` and `sink` with exit 3 and "stopping
            # a Kafka client was interrupted", all their work committed or to be re-read.
            await _finish_consumer_stop(client)
        elif not failing:
            raise BrokerUnavailableError("stopping a Kafka client was interrupted") from None


async def _finish_consumer_stop(cons: AIOKafkaConsumer) -> None:
    """What ``AIOKafkaConsumer.stop`` leaves undone when the first of its fetcher's pending
    tasks re-raises its cancellation: cancel the others, then close the connections (left
    open, the garbage collector finds them: "unclosed transport"). Private attributes, hence
    aiokafka's upper bound; the outage tests stop consumers this way."""
    fetcher = cons._fetcher
    pending = list(fetcher._pending_tasks) if fetcher is not None else []
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await cons._client.close()


def request_rejoin(cons: AIOKafkaConsumer) -> None:
    """Have the group consumer ``cons`` join its group again at its coordinator's next
    turn: revocation, JoinGroup, SyncGroup, assignment. aiokafka does so itself once a
    request of the member is refused (a heartbeat, a commit); a member that may have been
    dropped asks first (:class:`~stream_expiry.fence.WriteFence`). Private API of
    aiokafka 0.14 (its upper bound in pyproject.toml); a consumer with no group: nothing."""
    coordinator = getattr(cons, "_coordinator", None)
    if isinstance(coordinator, GroupCoordinator):
        coordinator.request_rejoin()


async def abandon_join(cons: AIOKafkaConsumer) -> bool:
    """Give up the group join ``cons`` is in, so that stopping it is prompt; True if there
    was one. Called just before ``stop()``.

    aiokafka 0.14's ``stop()`` waits for its coordination task, which goes on to join
    (even when the stop came before the JoinGroup was sent), waits for the JoinGroup the
    coordinator holds until every member has joined (~6 s on the test broker, up to the
    rebalance timeout on Kafka), runs SyncGroup and the assignment callback, and only then
    sends LeaveGroup: a SIGTERM during the first join took 3-6 s to stop, one while
    running 0.2 s. Cancelled instead, a first join has nothing to leave (generation -1:
    aiokafka sends no LeaveGroup), and on Kafka a member id already handed out costs the
    others one session timeout, as a crash does; a join past its JoinGroup, or a rejoin,
    keeps a valid generation, so ``stop()`` still sends LeaveGroup.
    """
    coordinator = cons._coordinator
    if not isinstance(coordinator, GroupCoordinator):
        return False  # no group, or not started
    task: asyncio.Task[None] = coordinator._coordination_task
    if task.done() or not _between_callbacks(cons, coordinator):
        return False
    task.cancel()
    # Waited for, not awaited: its CancelledError is not this task's, and close() skips a
    # coordination task already done.
    await asyncio.wait([task])
    return True


def _between_callbacks(cons: AIOKafkaConsumer, coordinator: GroupCoordinator) -> bool:
    """Whether the coordination task is joining and not in a rebalance callback, which a
    cancellation would cut short (a revocation commits). Before the first assignment there
    is only a revocation of nothing to cut; after it, aiokafka marks a join prepared once
    the revocation returned, and ends the reassignment, setting the new assignment, before
    the assignment callback. Private state of aiokafka 0.14, hence the upper bound
    ``aiokafka<0.15`` in pyproject.toml."""
    subscription = cons._subscription.subscription
    if subscription is None or subscription.assignment is None:
        return True
    prepared: bool = coordinator._performed_join_prepare
    reassigning: bool = cons._subscription.reassignment_in_progress
    return prepared and reassigning


@contextlib.asynccontextmanager
async def admin_client(brokers: Brokers) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client, closed at the end of the block; a failure to start is said
    as the project's :class:`BrokerError` (with the login's reason under TLS or SASL)."""
    conn = as_connection(brokers)
    admin = AIOKafkaAdminClient(**client_options(conn), request_timeout_ms=10_000)
    try:
        try:
            await _start(admin, conn)
        except _START_ERRORS as exc:
            raise await _start_failure("admin client", conn, exc) from exc
        yield admin
    finally:
        await admin.close()


async def ensure_topics(
    brokers: Brokers,
    topics: Iterable[str],
    *,
    partitions: int = DEFAULT_PARTITIONS,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    replication: int = 1,
) -> list[str]:
    """Create the topics that do not exist yet; existing ones are left as they are.
    Returns the topics that did not exist (another client may have made one meanwhile).

    ``configs`` maps a topic to its Kafka configs (``kafka_settings.topic_configs`` gives
    the service's). CreateTopics answers per topic and aiokafka does not raise for those
    answers: every topic the broker refused (other than "already exists", a race with
    another instance) raises :class:`BrokerError` with the broker's own error.
    """
    conn = as_connection(brokers)
    configs = configs or {}
    async with admin_client(conn) as admin:
        try:
            existing = set(await admin.list_topics())
            missing = [t for t in dict.fromkeys(topics) if t not in existing]
            if not missing:
                return []
            new = [
                NewTopic(
                    t,
                    num_partitions=partitions,
                    replication_factor=replication,
                    topic_configs=dict(configs.get(t, {})),
                )
                for t in missing
            ]
            check_created(await admin.create_topics(new))
            return missing
        except KafkaError as exc:
            raise BrokerError(
                f"cannot create topics on Kafka at {conn.bootstrap_servers} ({exc!r}); check "
                "that the brokers are up and the --bootstrap-servers address"
            ) from exc


async def ensure_config_topics(
    brokers: Brokers, config: Config, names: Iterable[str] | None = None
) -> list[str]:
    """Make those of ``config``'s topics named (every one when None) that do not exist, as
    the service makes them (``kafka_settings.topic_configs``, the ``[topics]`` partitions
    and replication); returns the ones made. The commands that write or read a topic the
    service owns make a missing one so, not with a broker's defaults."""
    every = topic_configs(config)
    wanted = every if names is None else {name: every[name] for name in names}
    settings = config.topic_settings
    return await ensure_topics(
        brokers,
        wanted,
        configs=wanted,
        partitions=settings.partitions,
        replication=settings.replication_factor,
    )


async def message_limits(brokers: Brokers, topics: Iterable[str]) -> dict[str, int]:
    """Each topic's ``max.message.bytes`` as the broker describes it: on Kafka the topic's
    own or else the broker's default (about 1 MiB), what a message larger than the
    producer's limit already is refused by. A topic the broker says nothing about (some
    Kafka-protocol brokers describe only the configs given at creation), or a broker that
    cannot describe configs at all, is left out: the producer's limit is then all there is.
    """
    return size_limits(await topic_config_values(brokers, topics, ("max.message.bytes",)))


def size_limits(described: Mapping[str, Mapping[str, str]]) -> dict[str, int]:
    """The ``max.message.bytes`` of each topic in ``described`` that has one."""
    return {
        topic: int(value)
        for topic, values in described.items()
        if (value := values.get("max.message.bytes", "")).isdigit()
    }


async def topic_config_values(
    brokers: Brokers, topics: Iterable[str], names: Iterable[str]
) -> dict[str, dict[str, str]]:
    """The configs ``names`` of each of ``topics``, as the broker describes them (Kafka: the
    topic's own, else the broker's default); what it does not describe is left out, and a
    broker that cannot describe configs at all gives nothing."""
    wanted = list(dict.fromkeys(topics))
    keys = frozenset(names)
    found: dict[str, dict[str, str]] = {}
    async with admin_client(brokers) as admin:
        resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in wanted]
        try:
            responses = await admin.describe_configs(resources)
        except KafkaError:
            return {}
        for response in responses:
            for error_code, _message, _kind, name, entries in response.resources:
                if error_code != 0 or name not in wanted:
                    continue
                for entry in entries:
                    if entry[0] in keys and entry[1] is not None:
                        found.setdefault(name, {})[entry[0]] = str(entry[1])
    return found


def batch_bytes(limits: Iterable[int]) -> int:
    """The record batch size of a producer writing to topics that take messages of at most
    ``limits`` bytes (their ``max.message.bytes``, :func:`message_limits`).

    Kafka holds a whole record batch to the limit, not each message in it: a batch of
    small messages over a topic's limit is refused (MESSAGE_TOO_LARGE) as a large message
    is, and the send stops the service. aiokafka measures a batch as Kafka does (its header
    included) and always takes a batch's first message, so there is no floor to keep: a
    limit smaller than a message makes batches of one, and a message alone over the limit
    is cut before it gets here (:mod:`stream_expiry.oversize`). Measured uncompressed:
    never less than what compression sends."""
    return min((BATCH_BYTES, *limits))


def check_created(response: Any) -> None:
    """Raise :class:`BrokerError` for every topic a CreateTopics response says failed."""
    failed: list[str] = []
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        if code in (0, TopicAlreadyExistsError.errno):
            continue
        error = for_code(code)
        detail = entry[2] if len(entry) > 2 and entry[2] else error.description
        failed.append(f"{name!r}: {error.message} ({detail})")
    if failed:
        hint = "check the [topics] settings in the config file"
        if any("REPLICATION_FACTOR" in f for f in failed):
            hint = "set [topics] replication_factor to at most the number of brokers"
        raise BrokerError(f"the broker refused to create {'; '.join(failed)}; {hint}")


@contextlib.asynccontextmanager
async def producer(brokers: Brokers, **overrides: Any) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer with acks=all: a tombstone counts as sent only once it is durable."""
    conn = as_connection(brokers)
    options: dict[str, Any] = {
        **client_options(conn),
        "acks": "all",
        "partitioner": crc32_partitioner,
        "linger_ms": 2,
        "max_batch_size": BATCH_BYTES,
        # A stamp or a dead letter carries a whole input message: as large as the topics
        # allow (kafka_settings.MAX_MESSAGE_BYTES), not aiokafka's 1 MiB default.
        "max_request_size": MAX_MESSAGE_BYTES,
        "request_timeout_ms": PRODUCER_REQUEST_TIMEOUT_MS,
    }
    options.update(overrides)
    async with _started(AIOKafkaProducer(**options), "producer", conn) as prod:
        yield prod


@contextlib.asynccontextmanager
async def consumer(
    brokers: Brokers, *topics: str, **overrides: Any
) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer; without ``group_id`` it is a plain reader that commits nothing."""
    conn = as_connection(brokers)
    options: dict[str, Any] = {
        **client_options(conn),
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        "isolation_level": "read_committed",
        "request_timeout_ms": 40_000,
        "fetch_max_wait_ms": 100,  # an idle partition answers (with its high watermark) fast
        # Room for the largest message the topics take: a broker that does not hand out an
        # oversized first message anyway (Kafka does, others may not) would stall the
        # partition behind it for good.
        "max_partition_fetch_bytes": MAX_MESSAGE_BYTES,
    }
    options.update(overrides)
    async with _started(AIOKafkaConsumer(*topics, **options), "consumer", conn) as cons:
        yield cons


_Client = TypeVar("_Client", AIOKafkaProducer, AIOKafkaConsumer)


@contextlib.asynccontextmanager
async def _started(client: _Client, role: str, conn: Connection) -> AsyncIterator[_Client]:
    """``client`` started (a failure to start said as the project's error, for ``role``),
    and stopped at the end of the block, whether it leaves with an error or not."""
    try:
        await _start(client, conn)
    except _START_ERRORS as exc:
        await client.stop()
        raise await _start_failure(role, conn, exc) from exc
    except BaseException:
        # Interrupted while it connects (Ctrl-C, SIGTERM): closed all the same, or asyncio
        # says "Unclosed AIOKafkaConsumer" on the way out.
        await _stop(client, failing=True)
        raise
    try:
        yield client
    except BaseException:
        await _stop(client, failing=True)
        raise
    await _stop(client, failing=False)


async def stable_ends(
    cons: AIOKafkaConsumer, tps: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """The end of each assigned partition as the consumer can read it (:func:`stable_end`),
    learnt from a fetch's answer.

    ``end_offsets`` gives wrong answers on some Kafka-protocol brokers (../shared/BROKER.md);
    the high watermark and last stable offset that every fetch response carries are right
    on all of them. The consumer's positions are restored afterwards.
    """
    positions = {tp: await cons.position(tp) for tp in tps}
    unknown = [tp for tp in tps if cons.highwater(tp) is None]
    deadline = time.monotonic() + 15
    while unknown and time.monotonic() < deadline:
        # Any fetch response carries the high watermark, empty partitions' too. A short
        # wait, looked at again: ``getmany`` waits out its timeout when no record comes,
        # however soon the answer did (0.1 s of every restore, each partition at its end).
        await cons.getmany(*unknown, timeout_ms=5, max_records=1)
        unknown = [tp for tp in unknown if cons.highwater(tp) is None]
    if unknown:
        raise BrokerError(f"no fetch response for {unknown} within 15 s: is the broker healthy?")
    ends = {tp: stable_end(cons, tp) or 0 for tp in tps}
    for tp, pos in positions.items():
        cons.seek(tp, pos)
    return ends


def known_partition_counts(cons: AIOKafkaConsumer | None, topics: Iterable[str]) -> dict[str, int]:
    """How many partitions each of ``topics`` has, as ``cons`` (a group's consumer) knows it
    from its metadata, with no request (0: not known, or no consumer)."""
    return {t: 0 if cons is None else len(cons.partitions_for_topic(t) or ()) for t in topics}


def standby_said(member: str, group: str, counts: Mapping[str, int], *, doing: str) -> str:
    """What a member its group gave no partitions says (INFO, once a stretch): the group has
    more members than ``counts``' topics have partitions, and ``member`` (``this sink``,
    ``this rekey``, ``this instance``) waits ready, ``doing`` nothing, until one leaves.
    Ready and silent, a standby could not be told from a member stuck joining; the service,
    the sinks and rekey say it in one wording, kept here."""
    named = [f"{topic} ({n})" for topic, n in counts.items()]
    topics = f"{', '.join(named[:-1])} and {named[-1]}" if len(named) > 1 else "".join(named)
    return (
        f"assigned no partitions: the group {group} has more members than {topics} "
        f"{'has' if len(named) == 1 else 'have'} partitions; {member} waits as a standby "
        f"(ready, {doing} nothing) until a member leaves"
    )


def counting_partitions(
    base: Any, member: Callable[[], AIOKafkaConsumer | None]
) -> type[AbstractPartitionAssignor]:
    """``base`` (an aiokafka assignor, untyped here), each join of which says in its user
    data (empty before) the subscribed topics' partition counts as ``member()``, the group's
    consumer, knows them (0: not known, or no consumer yet): for rekey and the sinks, as the
    service's assignors do (:func:`stream_expiry.instances.assignors`). The leader joins
    again when its metadata shows partitions added to a subscribed topic; Kafka rebalances
    at any join of the leader, but the test broker (Tansu) keeps a formed group as it is for
    a member whose join says what its last one said (the same generation, the assignment
    before), and the new partitions stayed unassigned, their messages unread, until a member
    came or went (a trial). The name, hence the group's protocol, is ``base``'s, whose
    assignment reads no user data: a member of an earlier version in the group is no matter."""

    class Counting(base):  # type: ignore[misc]  # aiokafka is untyped here
        @classmethod
        def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
            topics = list(topics)
            counts = known_partition_counts(member(), topics)
            said = orjson.dumps({"partitions": dict(sorted(counts.items()))})
            return ConsumerProtocolMemberMetadata(cls.version, topics, said)

    Counting.__name__ = Counting.__qualname__ = f"PartitionCounting{base.__name__}"
    return Counting


class LagGauges(Protocol):
    """The lag series of a group member's partitions (the metrics of rekey and the sinks)."""

    def set_lag(self, topic: str, partition: int, records: int) -> None: ...

    def forget_partition(self, topic: str, partition: int) -> None: ...


class OwnedPartitions:
    """The partitions a group member's rebalance listener says are its own: the only ones
    rekey and the sinks set a lag gauge for (the service's are its processors).
    ``cons.assignment()`` will not do: aiokafka lists the partitions revoked there until
    the group gives the new assignment, while the member's loop goes on (a join is held
    seconds), so the gauges a revocation dropped were set again, and a partition given to
    another member kept its last lag here for good, beside its new owner's (a dashboard
    summing the lag counted it twice)."""

    def __init__(self) -> None:
        self._partitions: set[TopicPartition] = set()

    def __contains__(self, tp: object) -> bool:
        return tp in self._partitions

    def __iter__(self) -> Iterator[TopicPartition]:
        return iter(sorted(self._partitions))

    def assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """The listener's ``on_partitions_assigned``: these are the member's now."""
        self._partitions.update(assigned)

    def revoked(self, revoked: Iterable[TopicPartition], gauges: LagGauges | None) -> None:
        """The listener's ``on_partitions_revoked``: none is the member's until the next
        assignment (eager rebalancing gives everything anew), and the lag series of those
        taken go (another member reports them now)."""
        self._partitions.clear()
        if gauges is not None:
            for tp in revoked:
                gauges.forget_partition(tp.topic, tp.partition)

    def clear(self) -> None:
        """A new session after an outage: its group gives the partitions anew."""
        self._partitions.clear()


def stable_end(cons: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """Where reading ``tp`` can go as of the consumer's last fetch (None before one): the
    high watermark, or below it the last stable offset, the first offset of a transaction
    still open, which a ``read_committed`` consumer does not pass until it ends. Waiting
    for the high watermark instead waited for the transaction (``read_to_end`` stalled,
    then failed)."""
    high: int | None = cons.highwater(tp)
    return None if high is None else readable_end(high, cons.last_stable_offset(tp))


def readable_end(high: int, stable: int | None) -> int:
    """The end of a committed read, from what a fetch answered: the high watermark, or
    the last stable offset below it (absent, or -1, when the broker gives none). The
    consumer's view (:func:`stable_end`) and the raw fetch (:mod:`stream_expiry.fetch`)
    both ask this, so the two kinds of read stop at the same place."""
    if stable is None or stable < 0:
        return high
    return min(high, stable)


async def committed_offsets(
    cons: AIOKafkaConsumer, tps: Iterable[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """The committed offset of each partition for the group ``cons`` names (None: never
    committed). The consumer needs no membership: OffsetFetch only, which every
    Kafka-protocol broker answers (the admin client's list_consumer_group_offsets is not
    understood by all of them)."""
    out: dict[TopicPartition, int | None] = {}
    for tp in tps:
        offset = await cons.committed(tp)
        out[tp] = offset if offset is not None and offset >= 0 else None
    return out


async def topic_partitions(cons: AIOKafkaConsumer, topics: Iterable[str]) -> list[TopicPartition]:
    """Every partition of ``topics``, in order (topic, then partition): what a command
    assigns, or asks the committed offsets or ends of (:func:`partitions_of`)."""
    return [TopicPartition(t, p) for t in topics for p in sorted(await partitions_of(cons, t))]


async def partitions_of(cons: AIOKafkaConsumer, topic: str) -> set[int]:
    """The partitions of any topic, also one the consumer neither subscribed nor assigned
    (its own metadata only covers those)."""
    parts = cons.partitions_for_topic(topic)
    if not parts:
        cluster = await cons._client.fetch_all_metadata()
        parts = cluster.partitions_for_topic(topic)
    return set(parts or ())


async def missing_topics(brokers: Brokers, topics: Iterable[str]) -> list[str]:
    """Those of ``topics`` the cluster does not have, asked without creating any (a
    metadata request for every topic; one naming a topic may create it where the broker
    auto-creates topics). A command that reads a topic finds a missing one empty: its
    answer then looks like a clean one (``replay``'s "0 stamps read" under a config that
    mistyped or left out the service's [topics], a trial)."""
    have = await topic_names(brokers)
    return [t for t in dict.fromkeys(topics) if t not in have]


async def cluster_id(brokers: Brokers) -> str | None:
    """The id the cluster gives itself in its metadata (None from a broker older than
    Kafka 0.10.1): what a state directory's stores were written against
    (:mod:`stream_expiry.state.cluster_mark`)."""
    async with admin_client(brokers) as admin:
        with broker_errors("reading the cluster's metadata"):
            described = await admin.describe_cluster()
    found = described.get("cluster_id")
    return found if isinstance(found, str) and found else None


async def _all_metadata(brokers: Brokers) -> Any:
    """The cluster's metadata for every topic: one request, which creates none of them."""
    async with consumer(brokers) as cons:
        with broker_errors("reading topic metadata"):
            return await cons._client.fetch_all_metadata()


async def topic_names(brokers: Brokers) -> set[str]:
    """The topics the cluster has (with partitions), asked as :func:`missing_topics` asks."""
    cluster = await _all_metadata(brokers)
    return {t for t in cluster.topics() if cluster.partitions_for_topic(t)}


async def partition_counts(brokers: Brokers, topics: Iterable[str]) -> dict[str, int]:
    """How many partitions each of ``topics`` has (0: the cluster does not have it), asked
    as :func:`missing_topics` asks: one metadata request, which makes none of them."""
    cluster = await _all_metadata(brokers)
    return {t: len(cluster.partitions_for_topic(t) or ()) for t in topics}


async def topic_ends(brokers: Brokers, topics: Iterable[str]) -> dict[str, int]:
    """Each topic's end summed over its partitions (:func:`stable_ends`): 0 for one that
    nothing was ever written to, as a topic a broker made when a client named it is
    (retention never brings an end back to 0). Give topics that exist: a missing one
    counts 0 and is not asked for, so not made."""
    ends = dict.fromkeys(topics, 0)
    async with consumer(brokers) as cons:
        with broker_errors("reading the ends of topics"):
            tps = await topic_partitions(cons, ends)
            if tps:
                cons.assign(tps)
                for tp, end in (await stable_ends(cons, tps)).items():
                    ends[tp.topic] += end
    return ends


async def read_to_end(
    cons: AIOKafkaConsumer,
    topic: str,
    *,
    start: Mapping[int, int] | None = None,
    max_records: int = 5000,
    then_follow: bool = False,
) -> AsyncGenerator[dict[TopicPartition, list[Any]], None]:
    """Assign every partition of ``topic`` to ``cons`` and yield batches up to its current end.
    (A generator: a reader that stops early, ``hold list`` once it has found what it
    looks for, closes it with :func:`contextlib.aclosing`.)

    ``start`` maps partitions to the offset to start from (default: the beginning). Used for
    the compacted topics read whole at start (policies, tombstones) and by ``replay``.
    ``then_follow``: the caller goes on polling ``cons``, so records written meanwhile that
    came with the last batches are yielded too (dropped, the consumer being past them, they
    were lost: a policy update sent while a service started, say).
    """
    tps = await topic_partitions(cons, [topic])
    if not tps:
        return
    cons.assign(tps)
    beginning = []
    for tp in tps:
        offset = (start or {}).get(tp.partition)
        if offset is None:
            beginning.append(tp)
        else:
            cons.seek(tp, offset)
    # One seek for them all: each waits for a turn of the consumer's fetch task, which
    # waits out a fetch in flight, ~0.1 s; one a partition was 9.7 s at start for the
    # policies and holds topics of 48 partitions (docs/BENCHMARKS.md, round 27).
    if beginning:
        await cons.seek_to_beginning(*beginning)
    ends = await stable_ends(cons, tps)
    remaining = {tp for tp in tps if await cons.position(tp) < ends[tp]}
    last_progress = time.monotonic()
    while remaining:
        batch = await cons.getmany(*remaining, timeout_ms=500, max_records=max_records)
        if batch:
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > STALL_S:
            raise BrokerError(
                f"reading {topic} made no progress for {STALL_S:.0f} s "
                f"({len(remaining)} partitions short of their end): is the broker up?"
            )
        out: dict[TopicPartition, list[Any]] = {}
        for tp, records in batch.items():
            kept = records if then_follow else [r for r in records if r.offset < ends[tp]]
            if kept:
                out[tp] = kept
        for tp in list(remaining):
            if await cons.position(tp) >= ends[tp]:
                remaining.discard(tp)
        if out:
            yield out


def key_partition(key: bytes, partitions: int) -> int:
    """The partition of a record key on our output topics: CRC-32 modulo the count.

    Every stream-expiry producer (service, replay) uses it, so a record's stamps, its
    Kafka-native tombstone and its tombstone event each stay on one partition and
    compaction sees them together. CRC-32 is computed in C; aiokafka's murmur2 is pure
    Python and was a fifth of the ingest time.
    """
    return zlib.crc32(key) % partitions


def crc32_partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """aiokafka partitioner form of :func:`key_partition` (random for null keys)."""
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[key_partition(key, len(all_partitions))]


class OutputBuffer:
    """Collects a batch's output messages per (topic, partition) and sends them as record
    batches: one produce request per partition instead of a future per message.

    ``flush`` returns the futures of the sent batches; the caller awaits them (the broker's
    acks) before it writes the index, which is what makes the order of writes hold.
    """

    def __init__(self, prod: AIOKafkaProducer) -> None:
        self._prod = prod
        self._partitions: dict[str, int] = {}
        self._open: dict[tuple[str, int], Any] = {}
        self._sent: list[Any] = []

    async def _count(self, topic: str) -> int:
        n = self._partitions.get(topic)
        if n is None:
            n = len(await self._prod.partitions_for(topic))
            self._partitions[topic] = n
        return n

    async def add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        n = await self._count(topic)
        partition = random.randrange(n) if key is None else key_partition(key, n)
        slot = (topic, partition)
        batch = self._open.get(slot)
        if batch is None:
            batch = self._open[slot] = self._prod.create_batch()
        if (
            batch.append(timestamp=timestamp_ms, key=key, value=value, headers=headers or [])
            is None
        ):
            self._sent.append(await self._prod.send_batch(batch, topic, partition=partition))
            batch = self._open[slot] = self._prod.create_batch()
            if (
                batch.append(timestamp=timestamp_ms, key=key, value=value, headers=headers or [])
                is None
            ):
                raise BrokerError(
                    f"a message for {topic} is larger than the producer's max_batch_size"
                )

    async def flush(self) -> list[Any]:
        """Send every open batch; returns the futures of all batches sent since the last flush."""
        for (topic, partition), batch in self._open.items():
            self._sent.append(await self._prod.send_batch(batch, topic, partition=partition))
        self._open.clear()
        sent, self._sent = self._sent, []
        return sent
