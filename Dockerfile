# stream-expiry: the service (and the sinks) in one image.
#
#   docker build -t stream-expiry .
#   docker run -v state:/var/lib/stream-expiry -p 9400:9400 \
#     -e STREAM_EXPIRY_BOOTSTRAP_SERVERS=kafka:9092 stream-expiry
#
# Dependencies are installed with the versions that were tested (requirements.lock, written
# by scripts/lock_requirements.py). The user is numeric, so Kubernetes' runAsNonRoot can
# verify it without a passwd lookup.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STREAM_EXPIRY_STATE_DIR=/var/lib/stream-expiry \
    STREAM_EXPIRY_METRICS_PORT=9400

# jemalloc for the service's heap: RocksDB's churn fragments glibc's, and a service that
# ingests millions of records in one run keeps growing past its budget with it (3 M records:
# 135 MiB over its start against 98 MiB with jemalloc; docs/BENCHMARKS.md, round 49). The
# link gives every architecture's library one path for LD_PRELOAD below.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libjemalloc2 \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "$(ls /usr/lib/*-linux-gnu/libjemalloc.so.2)" /usr/local/lib/libjemalloc.so.2
ENV LD_PRELOAD=/usr/local/lib/libjemalloc.so.2

WORKDIR /app
COPY requirements.lock ./
# Every dependency at its tested version (rocksdict, the state store's, included).
RUN pip install -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY stream_expiry ./stream_expiry
# The compiled codec (stream_expiry/_native.c) needs a C compiler to build and not after:
# installed for this step and removed within it. The import fails the build if it did not
# compile (the package would otherwise install without it, and run slower unannounced).
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --constraint requirements.lock --no-deps ".[postgres]" \
    && python -c "import stream_expiry._native" \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && pip check

# The state directory holds record ids: its user's only (0700), as `run` makes one; a Docker
# volume takes this directory's mode, and mkdir's 0755 left the state readable to all.
RUN mkdir -p /var/lib/stream-expiry /etc/stream-expiry \
    && chown 10001:10001 /var/lib/stream-expiry \
    && chmod 0700 /var/lib/stream-expiry
USER 10001:10001
VOLUME ["/var/lib/stream-expiry"]
EXPOSE 9400

# Liveness: the loop runs. Readiness (/readyz) is for the orchestrator's routing and rollouts.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('STREAM_EXPIRY_METRICS_PORT', '9400') + '/healthz', timeout=4)"]

ENTRYPOINT ["stream-expiry"]
CMD ["run"]
