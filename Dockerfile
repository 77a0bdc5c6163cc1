# One image for every role: molam-analytics api | consume | alerts | refresh-views | backfill |
# migrate | operator | ...
#
#   DOCKER_BUILDKIT=1 docker build -t molam-analytics:0.1.0 .
#   docker run --rm molam-analytics:0.1.0 --help
#
# Needs BuildKit (the default of Docker 23+; on Docker 20.10 set DOCKER_BUILDKIT=1): only the
# stages the target needs are built, and the runtime mounts the wheels instead of copying them.
#
# Build arguments:
#   BASE_IMAGE     the runtime's base: Debian bookworm with python3 (3.11) and python3-venv
#   BUILDER_IMAGE  where the wheels are compiled: the same Python with gcc and its headers
#   WHEELS         builder (default): compile the project and all its dependencies here;
#                  prebuilt: take them from the build context instead, the dependencies' wheels
#                  in wheels/deps/ and the project's in wheels/project/ (what `make image`
#                  does on machines whose builds cannot reach the package index: it builds
#                  them on the host, see stack/image.sh)
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG BUILDER_IMAGE=python:3.11-bookworm
ARG WHEELS=builder

# ---- builder: the project and all its dependencies as wheels ----
# The full image, not slim: the consumer's batch summary is a C extension and needs gcc and the
# Python headers. Only the wheels leave this stage.
FROM ${BUILDER_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml setup.py ./
COPY src/ src/
# The project's wheel apart from the others, so the runtime installs them in two layers and a
# change of code reinstalls only the project.
RUN pip wheel --wheel-dir /wheels/deps . \
    && mkdir /wheels/project \
    && mv /wheels/deps/molam_analytics-*.whl /wheels/project/

# ---- prebuilt: the same wheels, built elsewhere and sent as the build context ----
FROM scratch AS prebuilt
COPY wheels/ /wheels/

FROM ${WHEELS} AS wheels

# ---- runtime: only the installed wheels, no compilers, no pip cache, no sources ----
FROM ${BASE_IMAGE} AS runtime

LABEL org.opencontainers.image.title="molam-analytics" \
      org.opencontainers.image.description="Real-time payments analytics: API, consumer, alerts and Kubernetes operator" \
      org.opencontainers.image.licenses="Apache-2.0"

# The project lives in a virtualenv of the base's python3: the same layout on the official
# python image and on a plain Debian one, whose system Python pip must not touch.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/molam \
    PATH=/opt/molam/bin:$PATH

# A fixed, numeric non-root user: Kubernetes' runAsNonRoot can verify it, the chart sets the same.
RUN groupadd --system --gid 10001 molam \
    && useradd --system --uid 10001 --gid molam --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin molam

# Offline from the wheels alone, the dependencies first; the venv stays owned by root. The
# wheels are mounted on /mnt, which the base already has: a new mount point would stay behind.
RUN --mount=type=bind,from=wheels,source=/wheels/deps,target=/mnt \
    python3 -m venv /opt/molam \
    && pip install --no-index /mnt/*.whl
# Without --no-deps: pip fails here if a dependency is missing from the layer above.
RUN --mount=type=bind,from=wheels,source=/wheels/project,target=/mnt \
    pip install --no-index --find-links=/mnt /mnt/molam_analytics-*.whl

WORKDIR /app
USER 10001:10001

# API port; the operator's liveness (8080) and metrics ports come from the chart.
EXPOSE 8082

ENTRYPOINT ["molam-analytics"]
CMD ["--help"]
