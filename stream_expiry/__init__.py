"""stream-expiry: real-time retention enforcement for conversational-AI platforms, on Kafka.

The public API is small on purpose: the message model and the error hierarchy here; the
pure core in :mod:`stream_expiry.engine`, :mod:`stream_expiry.policy` and
:mod:`stream_expiry.wheel`; the service in :mod:`stream_expiry.service`; downstream stores
in :mod:`stream_expiry.sinks`. Importing this package does not import aiokafka.
"""

from stream_expiry.errors import (
    BrokerError,
    ConfigurationError,
    InputError,
    StoreError,
    StreamExpiryError,
)
from stream_expiry.model import Identity, InputEvent, Rejection, Stamp, decode_key

__all__ = [
    "BrokerError",
    "ConfigurationError",
    "Identity",
    "InputError",
    "InputEvent",
    "Rejection",
    "Stamp",
    "StoreError",
    "StreamExpiryError",
    "decode_key",
]
__version__ = "0.1.0"
