FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream_expiry ./stream_expiry
RUN pip install --no-cache-dir ".[postgres]"
RUN useradd --system --home /var/lib/stream-expiry stream-expiry \
    && mkdir -p /var/lib/stream-expiry && chown stream-expiry /var/lib/stream-expiry
USER stream-expiry
ENTRYPOINT []
CMD ["stream-expiry", "run", "--config", "/etc/stream-expiry/expiry.toml"]
