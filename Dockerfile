# syntax=docker/dockerfile:1
# One image for every role: molam-analytics api | consume | alerts | refresh-views | backfill |
# migrate | operator | ...
#
#   docker build -t molam-analytics:0.1.0 .
#   docker run --rm molam-analytics:0.1.0 --help

# ---- build: the project and all its dependencies as wheels ----
# The full image, not slim: the consumer's batch summary is a C extension and needs gcc and the
# Python headers. Only the wheels leave this stage.
FROM python:3.11-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml setup.py ./
COPY workloads/ workloads/
COPY operator/ operator/
RUN pip wheel --wheel-dir /wheels .

# ---- runtime: only the installed wheels, no compilers, no pip cache, no sources ----
FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="molam-analytics" \
      org.opencontainers.image.description="Real-time payments analytics: API, consumer, alerts and Kubernetes operator" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONSAFEPATH=1

# A fixed, numeric non-root user: Kubernetes' runAsNonRoot can verify it, the chart sets the same.
RUN groupadd --system --gid 10001 molam \
    && useradd --system --uid 10001 --gid molam --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin molam

RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/*.whl

WORKDIR /app
USER 10001:10001

# API port; the operator's liveness (8080) and metrics ports come from the chart.
EXPOSE 8082

ENTRYPOINT ["molam-analytics"]
CMD ["--help"]
