#!/usr/bin/env bash
# Docker for the local node and `make image`: the daemon, a local Debian base image and the
# pod sandbox ("pause") image. Docker Hub cannot be reached from these machines, so both images
# are made here from Debian's archive with debootstrap.
#
#   stack/docker.sh up      install docker.io if missing, start dockerd if none answers, make
#                           the base and pause images if missing; prints STARTED=1 if it started
#                           dockerd (so `down` knows whether to stop it)
#   stack/docker.sh down    stop the dockerd that `up` started (images stay on disk)
#   stack/docker.sh status  exit 0 if a Docker daemon answers
#
# The root filesystem tarball is cached in $MOLAM_CACHE_DIR/docker (default
# ~/.cache/molam-analytics/docker), so a new daemon re-imports it in seconds instead of running
# debootstrap again (~1 min). The daemon makes no bridge and no NAT rules: pods get their network
# from the node's CNI bridge (stack/node.sh), and `docker run --network host` serves the rest.
set -euo pipefail

CACHE_ROOT="${MOLAM_CACHE_DIR:-$HOME/.cache/molam-analytics}"
DIR="$CACHE_ROOT/docker"
BASE_IMAGE="molam-analytics-base:bookworm"
PAUSE_IMAGE="molam-analytics-pause:bookworm"
ROOTFS_TAR="$DIR/bookworm-minbase.tar"
PIDFILE=/var/run/molam-dockerd.pid
LOG="$DIR/dockerd.log"
RUNTIME=molam-runc
PACKAGES=(docker.io debootstrap)
# The Debian CLI talks the daemon's API version; a newer CLI elsewhere on PATH may not.
DOCKER=/usr/bin/docker

log() { printf '[docker.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root (or sudo) for: $*"; fi
}

daemon_answers() { [[ -x $DOCKER ]] && timeout 10 "$DOCKER" info >/dev/null 2>&1; }

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    command -v apt-get >/dev/null || die "no apt-get: install ${missing[*]} by hand"
    log "installing ${missing[*]} (apt)"
    as_root apt-get -o DPkg::Lock::Timeout=600 update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}" >&2
}

# This VM refuses a negative oom_score_adj, and dockershim asks -998 for every pod sandbox
# (-997 for Guaranteed pods): runc then fails with "can't get final child's PID from pipe".
# The wrapper raises a negative process.oomScoreAdj in the bundle's config.json to 0.
write_runc_wrapper() {
    local runc
    runc=$(command -v runc || true)
    [[ -n $runc ]] || runc=/usr/sbin/runc
    mkdir -p "$DIR"
    cat >"$DIR/runc-wrapper.tmp" <<EOF
#!/bin/sh
# Made by stack/docker.sh: runc with a negative oom_score_adj raised to 0 (this VM refuses it).
bundle=""
prev=""
for arg in "\$@"; do
    case "\$prev" in --bundle|-b) bundle="\$arg" ;; esac
    case "\$arg" in --bundle=*) bundle="\${arg#--bundle=}" ;; esac
    prev="\$arg"
done
if [ -n "\$bundle" ] && [ -f "\$bundle/config.json" ]; then
    sed -i -E 's/"oomScoreAdj":[[:space:]]*-[0-9]+/"oomScoreAdj":0/' "\$bundle/config.json"
fi
exec $runc "\$@"
EOF
    chmod 0755 "$DIR/runc-wrapper.tmp"
    mv -f "$DIR/runc-wrapper.tmp" "$DIR/runc-wrapper"
}

start_daemon() {
    write_runc_wrapper
    log "starting dockerd (no bridge, no iptables; log: $LOG)"
    # Images are made here and never pulled: a pull (a pod naming an image that is not local)
    # meets a closed loopback port at once instead of looking for a registry off the machine.
    as_root env HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
        setsid dockerd --pidfile="$PIDFILE" --bridge=none --iptables=false --ip-masq=false \
        --exec-opt native.cgroupdriver=cgroupfs \
        --add-runtime "$RUNTIME=$DIR/runc-wrapper" --default-runtime "$RUNTIME" \
        </dev/null >>"$LOG" 2>&1 7>&- 8>&- 9>&- &
    local i
    for ((i = 0; i < 150; i++)); do
        daemon_answers && return 0
        [[ -f $PIDFILE ]] && ! kill -0 "$(<"$PIDFILE")" 2>/dev/null && break
        sleep 0.2
    done
    tail -n 30 "$LOG" >&2
    die "dockerd did not answer within 30 s (log: $LOG)"
}

debian_mirror() {
    local uri=""
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    fi
    [[ -n $uri ]] || uri=$(awk '/^deb / && !/security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [[ -n $uri ]] || die "no Debian mirror in the apt sources"
    echo "$uri"
}

make_rootfs() {
    [[ -s $ROOTFS_TAR ]] && return 0
    local root="$DIR/rootfs.tmp"
    as_root rm -rf "$root"
    log "debootstrap bookworm minbase with python3 into $root (~1 min)"
    as_root debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$root" "$(debian_mirror)" >>"$DIR/debootstrap.log" 2>&1 ||
        { tail -n 20 "$DIR/debootstrap.log" >&2; die "debootstrap failed (log: $DIR/debootstrap.log)"; }
    as_root rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    as_root tar -C "$root" -cf "$ROOTFS_TAR.tmp" .
    mv -f "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    as_root rm -rf "$root"
}

have_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

make_images() {
    if ! have_image "$BASE_IMAGE"; then
        make_rootfs
        log "importing $BASE_IMAGE"
        "$DOCKER" import -c 'CMD ["/bin/bash"]' "$ROOTFS_TAR" "$BASE_IMAGE" >/dev/null
    fi
    if ! have_image "$PAUSE_IMAGE"; then
        make_rootfs
        log "importing $PAUSE_IMAGE"
        "$DOCKER" import -c 'CMD ["/bin/sleep", "infinity"]' "$ROOTFS_TAR" "$PAUSE_IMAGE" >/dev/null
    fi
}

cmd_up() {
    mkdir -p "$DIR"
    exec 9>"$DIR/.up.lock"
    flock -w 900 9 || die "another 'up' holds $DIR/.up.lock"
    install_packages
    local started=0
    if ! daemon_answers; then
        start_daemon
        started=1
    fi
    make_images
    echo "STARTED=$started"
}

cmd_down() {
    [[ -f $PIDFILE ]] || return 0
    local pid i
    pid=$(<"$PIDFILE")
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping dockerd (pid $pid)"
        as_root kill -TERM "$pid"
        for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && as_root kill -KILL "$pid"
    fi
    as_root rm -f "$PIDFILE"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) daemon_answers ;;
    *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
