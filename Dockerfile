# syntax=docker/dockerfile:1
# pairline: multi-stage (a virtualenv built in a full image, copied into a slim
# one), non-root, Numba kernels compiled into the image, gRPC health check.
#   docker build -t pairline .
#   docker run --rm -p 50051:50051 -p 9464:9464 pairline --demo
#   docker compose up        (3 replicas + Redis: compose.yaml)
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/pairline
WORKDIR /src
# Dependencies first (a layer that survives source edits), then the package.
COPY pyproject.toml README.md ./
RUN mkdir -p src/pairline && touch src/pairline/__init__.py \
 && /opt/pairline/bin/pip install --upgrade pip \
 && /opt/pairline/bin/pip install . \
 && /opt/pairline/bin/pip uninstall -y pairline
COPY src ./src
RUN /opt/pairline/bin/pip install --no-deps .

FROM python:${PYTHON_VERSION}-slim AS runtime
RUN groupadd --system --gid 10001 pairline \
 && useradd --system --uid 10001 --gid pairline --home-dir /var/lib/pairline \
      --shell /usr/sbin/nologin pairline \
 && install -d -o pairline -g pairline /var/lib/pairline /var/lib/pairline/data \
      /var/cache/pairline/numba
COPY --from=build /opt/pairline /opt/pairline
ENV PATH=/opt/pairline/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/var/cache/pairline/numba \
    PAIRLINE_LISTEN=0.0.0.0:50051 \
    PAIRLINE_METRICS_LISTEN=0.0.0.0:9464 \
    PAIRLINE_DATA_DIR=/var/lib/pairline/data
# The durable privacy records of the embedded store (opt-outs, deletion
# tickets, tombstones, audit): mount a persistent volume here.
VOLUME /var/lib/pairline/data
USER pairline
WORKDIR /var/lib/pairline
# Compile every Numba kernel now, into the image, so a container reaches SERVING
# without compiling. Numba keys its cache by CPU model: on a different CPU the
# kernels are recompiled once at start (a few seconds) and the cache dir is
# writable for that.
RUN python -c "from pairline import kernels; kernels.warm()" \
 && test -n "$(ls -A "$NUMBA_CACHE_DIR")"
EXPOSE 50051 9464
# grpc.health.v1 on the gRPC port (no API key needed); exits 0 only when SERVING.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["pairline", "health", "--target", "127.0.0.1:50051", "--timeout", "3"]
ENTRYPOINT ["pairline", "serve"]
# Tenants (API key hashes, secrets) come from a mounted file: see docs/operations.md.
CMD ["--config", "/etc/pairline/pairline.toml"]
