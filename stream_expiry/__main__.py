"""``python -m stream_expiry`` is the ``stream-expiry`` command."""

from stream_expiry.entry import main

main()
