# syntax=docker/dockerfile:1
# Multi-stage: build a wheel with the dependencies, run as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --upgrade pip \
 && pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /app pairline
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
 && mkdir -p /app/data && chown pairline /app/data
USER pairline
# The durable privacy records (opt-outs, deletion tickets, tombstones, audit):
# mount a persistent volume here.
ENV PAIRLINE_LISTEN=0.0.0.0:50051 \
    PAIRLINE_DATA_DIR=/app/data \
    NUMBA_CACHE_DIR=/app/.numba-cache
VOLUME /app/data
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD python -c "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; ch=grpc.insecure_channel('127.0.0.1:50051'); sys.exit(0 if g.HealthStub(ch).Check(h.HealthCheckRequest(), timeout=2).status == h.HealthCheckResponse.SERVING else 1)"
ENTRYPOINT ["pairline", "serve"]
CMD ["--config", "/etc/pairline/pairline.toml"]
