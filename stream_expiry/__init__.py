"""stream-expiry: real-time retention enforcement for conversational-AI platforms, on Kafka."""

from stream_expiry.model import Identity, InputEvent, Rejection, Stamp, decode_key

__all__ = ["Identity", "InputEvent", "Rejection", "Stamp", "decode_key"]
__version__ = "0.1.0"
