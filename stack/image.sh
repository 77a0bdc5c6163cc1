#!/usr/bin/env bash
# `make image`: the project image in the local Docker, tagged molam-analytics:<version> and
# molam-analytics:dev.
#
# Docker Hub cannot be reached from these machines and pip cannot verify TLS inside
# `docker build`, so the build uses the Dockerfile's other path: the base is the local Debian
# image of stack/docker.sh, and every wheel (the project's, with its C extension, and all its
# dependencies) is built here on the host and sent as the build context (WHEELS=prebuilt). The
# build itself runs without a network.
#
# Wheels are cached under $MOLAM_CACHE_DIR/wheels (default ~/.cache/molam-analytics/wheels):
#   deps-<hash of pyproject.toml, setup.py and the host's Python>     the dependencies
#   project-<hash of those and of every file the Dockerfile copies>   the project's wheel
# so a change of code rebuilds only the project's wheel, and nothing changed rebuilds nothing
# (Docker's layer cache then reuses every layer).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE_ROOT="${MOLAM_CACHE_DIR:-$HOME/.cache/molam-analytics}"
WHEELS="$CACHE_ROOT/wheels"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
BASE_IMAGE="molam-analytics-base:bookworm"
IMAGE=molam-analytics
KEEP=3 # cached wheel sets of each kind kept (the newest)
# The daemon is Debian's Docker 20.10: its own CLI has BuildKit built in, while a newer CLI
# elsewhere on PATH needs the buildx plugin, which bookworm does not have.
DOCKER="${DOCKER:-/usr/bin/docker}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '[image.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# What the Dockerfile's builder stage copies (its .dockerignore keeps the rest out), as paths
# relative to the repo, sorted.
sources() {
    (cd "$ROOT" && find pyproject.toml setup.py src \
        \( -name __pycache__ -o -name '*.egg-info' \) -prune -o \
        -type f ! -name '*.pyc' ! -name '*.so' -print | LC_ALL=C sort)
}

hash_of() { (cd "$ROOT" && cat "$@" | sha256sum | cut -c1-16); }

python_tag() {
    "$PYTHON" -c 'import os, sys, sysconfig
print(sys.implementation.cache_tag, sysconfig.get_platform(), os.confstr("CS_GNU_LIBC_VERSION"))'
}

# Copies the sources into $1, so `pip wheel` builds from exactly what an image build would see
# and leaves no build/ or egg-info in the checkout.
stage_sources() {
    local dest=$1
    mkdir -p "$dest"
    sources | (cd "$ROOT" && xargs -d '\n' cp --parents -t "$dest")
}

# Keeps the $KEEP newest directories named $1-*.
prune() {
    find "$WHEELS" -mindepth 1 -maxdepth 1 -type d -name "$1-*" -printf '%T@ %p\n' |
        sort -rn | tail -n +$((KEEP + 1)) | cut -d' ' -f2- | xargs -r rm -rf
}

# Prints the two cache keys: the dependencies', then the project's.
wheel_keys() {
    local host_tag
    host_tag=$(python_tag)
    (hash_of pyproject.toml setup.py; echo "$host_tag") | sha256sum | cut -c1-16
    # sha256sum prints each file's path beside its hash: a renamed file changes the key too.
    (cd "$ROOT" && sources | xargs -d '\n' sha256sum; echo "$host_tag") | sha256sum | cut -c1-16
}

build_wheels() {
    local keys tmp
    keys=$(wheel_keys)
    DEPS_DIR="$WHEELS/deps-$(sed -n 1p <<<"$keys")"
    PROJECT_DIR="$WHEELS/project-$(sed -n 2p <<<"$keys")"
    [[ -d $DEPS_DIR && -d $PROJECT_DIR ]] && return 0

    tmp=$(mktemp -d "$WHEELS/.build.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    stage_sources "$tmp/src"
    if [[ ! -d $DEPS_DIR ]]; then
        log "building the project's and all dependencies' wheels on the host (cold: 10-60 s)"
        "$PYTHON" -m pip wheel --quiet --wheel-dir "$tmp/all" "$tmp/src" >&2
        mkdir -p "$tmp/deps" "$tmp/project"
        mv "$tmp"/all/molam_analytics-*.whl "$tmp/project/"
        mv "$tmp"/all/*.whl "$tmp/deps/"
        mv -T "$tmp/deps" "$DEPS_DIR"
    else
        log "building the project's wheel on the host (its dependencies are cached)"
        "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$tmp/project" "$tmp/src" >&2
    fi
    [[ -d $PROJECT_DIR ]] || mv -T "$tmp/project" "$PROJECT_DIR"
    rm -rf "$tmp"
    trap - EXIT
    prune deps
    prune project
}

# The host-built wheels must suit the base's Python: the same ABI (cp311) and a C library at
# least as new as the host's (the extension is compiled here, and pip chose manylinux wheels for
# this glibc). Checked once per base image.
check_base() {
    local id host image
    id=$("$DOCKER" image inspect --format '{{.Id}}' "$BASE_IMAGE") || die "no image $BASE_IMAGE"
    [[ -f "$WHEELS/base-${id#sha256:}.ok" ]] && return 0
    host=$(python_tag)
    image=$("$DOCKER" run --rm --network none --entrypoint python3 "$BASE_IMAGE" -c \
        'import os, sys, sysconfig
print(sys.implementation.cache_tag, sysconfig.get_platform(), os.confstr("CS_GNU_LIBC_VERSION"))')
    read -r host_py host_plat _ host_libc <<<"$host"
    read -r image_py image_plat _ image_libc <<<"$image"
    [[ $host_py == "$image_py" && $host_plat == "$image_plat" ]] ||
        die "the host's Python ($host) does not match $BASE_IMAGE's ($image): set PYTHON"
    [[ $(printf '%s\n%s\n' "$host_libc" "$image_libc" | sort -V | tail -n1) == "$image_libc" ]] ||
        die "the host's glibc $host_libc is newer than $BASE_IMAGE's $image_libc"
    rm -f "$WHEELS"/base-*.ok
    touch "$WHEELS/base-${id#sha256:}.ok"
}

main() {
    bash "$ROOT/stack/docker.sh" up >&2
    [[ -x $PYTHON ]] || die "no Python at $PYTHON (make venv, or set PYTHON)"
    mkdir -p "$WHEELS"
    exec 8>"$WHEELS/.lock"
    flock -w 1200 8 || die "another 'make image' holds $WHEELS/.lock"

    local version
    version=$("$PYTHON" -c 'import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$ROOT/pyproject.toml")
    check_base
    build_wheels

    # The build context: only the wheels, hard links into the cache (a fixed path, so BuildKit
    # sends only what changed).
    local context="$WHEELS/context"
    rm -rf "$context"
    mkdir -p "$context/wheels/deps" "$context/wheels/project"
    cp --link "$DEPS_DIR"/*.whl "$context/wheels/deps/" 2>/dev/null ||
        cp "$DEPS_DIR"/*.whl "$context/wheels/deps/"
    cp --link --force "$PROJECT_DIR"/*.whl "$context/wheels/project/" 2>/dev/null ||
        cp --force "$PROJECT_DIR"/*.whl "$context/wheels/project/"

    log "building $IMAGE:$version and $IMAGE:dev on $BASE_IMAGE"
    DOCKER_BUILDKIT=1 "$DOCKER" build --network none --progress plain \
        --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg BUILDER_IMAGE="$BASE_IMAGE" \
        --build-arg WHEELS=prebuilt \
        -f "$ROOT/Dockerfile" -t "$IMAGE:$version" -t "$IMAGE:dev" "$context" >&2 ||
        die "docker build failed"
    # The images this replaced, unless a container still uses them.
    "$DOCKER" image prune --force \
        --filter "label=org.opencontainers.image.title=$IMAGE" >/dev/null || true
    echo "$IMAGE:$version"
}

# Sourced (by the tests), it only defines its functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then main "$@"; fi
