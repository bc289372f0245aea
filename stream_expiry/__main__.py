"""``python -m stream_expiry`` is the ``stream-expiry`` command."""

import sys

from stream_expiry.cli import main

sys.exit(main())
