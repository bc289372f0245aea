"""What a command says when Kafka refuses a consumer group's settings."""

from __future__ import annotations

from aiokafka.errors import InvalidSessionTimeoutError

from stream_expiry.errors import BrokerError, BrokerUnavailableError
from stream_expiry.kafka import mapped


def test_a_session_timeout_the_brokers_refuse_names_the_setting_and_their_range() -> None:
    """The config takes a session timeout from 1 s (the test broker takes any), Kafka's
    brokers from 6 s by default: a service given ``session_timeout = "3s"`` stopped with
    ``InvalidSessionTimeoutError()`` and nothing of which setting, or what Kafka takes."""
    got = mapped(InvalidSessionTimeoutError(), "reading input topics failed")
    assert type(got) is BrokerError  # not an outage to wait out: retrying cures nothing
    assert not isinstance(got, BrokerUnavailableError)
    said = str(got)
    assert said.startswith("reading input topics failed: the brokers refused"), said
    assert "[service] session_timeout" in said
    assert "group.min.session.timeout.ms" in said
    assert "6s to 30m" in said
