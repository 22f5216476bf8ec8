# syntax=docker/dockerfile:1
# Both images from one file, built from the repository root; SERVICE picks the package and the
# final stage (port, healthcheck, entrypoint):
#   docker build --build-arg SERVICE=api -t verimail-api .
#   docker build --build-arg SERVICE=worker -t verimail-worker .
# A base-image or uv change happens here once.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG SERVICE=api

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM ${PYTHON_IMAGE} AS build
ARG SERVICE
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Dependencies first, from the lockfile only, so that a code change reuses this layer.
COPY pyproject.toml uv.lock ./
COPY shared/pyproject.toml shared/
COPY services/api/pyproject.toml services/api/
COPY services/worker/pyproject.toml services/worker/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace --package verimail-${SERVICE}
# Then this service and verimail-shared, as wheels (not editable), nothing else. The dev stack
# (`verimail-dev`, a script of verimail-shared) needs the `embedded` extra, which is not here:
# leave it out.
COPY shared/ shared/
COPY services/${SERVICE}/ services/${SERVICE}/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package verimail-${SERVICE} \
 && rm /app/.venv/bin/verimail-dev

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 verimail \
 && useradd --system --uid 10001 --gid verimail --no-create-home --shell /usr/sbin/nologin verimail
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1
USER 10001:10001

FROM runtime AS api
ENV API_HOST=0.0.0.0 API_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# Exec form: uvicorn is PID 1 and gets SIGTERM itself.
ENTRYPOINT ["verimail-api"]

FROM runtime AS worker
ENV WORKER_METRICS_HOST=0.0.0.0 WORKER_METRICS_PORT=9100
EXPOSE 9100
# Healthy while this container's worker refreshes its heartbeat key in Redis.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["verimail-worker", "--check"]
# Exec form: the worker is PID 1 and gets SIGTERM itself (it drains for WORKER_SHUTDOWN_GRACE_SECONDS).
ENTRYPOINT ["verimail-worker"]

# The image: the stage named by SERVICE.
FROM ${SERVICE}
