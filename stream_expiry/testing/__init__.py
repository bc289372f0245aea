"""Test helpers shared by the project's tests and benchmarks, and usable by embedders' tests.

* :mod:`stream_expiry.testing.proxy`: a loopback TCP (or TLS-terminating) proxy a test can
  cut, and a broker of its own behind it: broker outages without a broker restart.
* :mod:`stream_expiry.testing.tls`: a throwaway certificate authority, server and client
  certificates (needs the ``cryptography`` package, in the ``test`` extra).

Nothing here is imported by the service itself.
"""

from __future__ import annotations

from stream_expiry.testing.proxy import Proxy, proxied_broker

__all__ = ["Proxy", "proxied_broker"]
