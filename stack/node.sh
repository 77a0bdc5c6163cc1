#!/usr/bin/env bash
# A node that runs pods, joined to the control plane of stack/kube.sh: kube-scheduler, a kubelet
# on Docker (dockershim), kube-proxy (iptables), a CNI bridge for pods, and TCP relays so that
# pods reach the host's services and the apiserver (the `kubernetes` Service) on the node address.
#
#   stack/node.sh up STATE_DIR [RELAY=PORT:TARGET_PORT ...]
#                     start the node (the control plane in STATE_DIR must be up); each RELAY
#                     forwards NODE_IP:PORT to 127.0.0.1:TARGET_PORT (PostgreSQL, Redis, ...)
#   stack/node.sh down STATE_DIR     stop it (pods stay as objects; their containers are removed)
#   stack/node.sh address            add the node address to lo (idempotent); prints it
#
# Nothing listens beyond loopback and the node address NODE_IP (a /32 on lo) and the pods'
# bridge: the kubelet serves on NODE_IP, everything else on 127.0.0.1. Pods get 10.251.0.0/24 on
# the bridge molam0, no masquerade (their traffic never leaves this machine) and resolv.conf points
# at their own loopback, so no name lookup leaves the machine either.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=stack/kube.sh
source "$HERE/kube.sh"

NODE_IP=10.250.0.1
NODE_NAME=molam-node
POD_CIDR=10.251.0.0/24
BRIDGE=molam0
APISERVER_RELAY_PORT=6443
KUBELET_ROOT=/var/lib/molam-kubelet
PAUSE_IMAGE="molam-analytics-pause:bookworm"
NODE_PACKAGES=(containernetworking-plugins iptables conntrack socat)
NODE_PROCS=(kube-proxy kubelet kube-scheduler)   # stop order; relays after them

install_node_packages() {
    local missing=() p
    for p in "${NODE_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "installing ${missing[*]} (apt)"
    as_root apt-get -o DPkg::Lock::Timeout=600 update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}" >&2
}

# kubelet refuses a loopback node IP, and the kernel has no dummy links: a /32 on lo.
cmd_address() {
    ip -4 addr show dev lo | grep -q " $NODE_IP/" || as_root ip addr add "$NODE_IP/32" dev lo
    echo "$NODE_IP"
}

# A relay runs as socat under the name relay-PORT (argv[0]), so pid_alive knows it.
start_relay() { # PORT TARGET_PORT
    local name="relay-$1"
    printf '\n==== %s: starting %s\n' "$(date '+%F %T')" "$name" >>"$STATE/logs/$name.log"
    setsid bash -c 'exec -a "$0" socat "$@"' "$name" \
        "TCP-LISTEN:$1,bind=$NODE_IP,reuseaddr,fork" "TCP:127.0.0.1:$2" \
        </dev/null >>"$STATE/logs/$name.log" 2>&1 7>&- 8>&- 9>&- &
    echo "$!" >"$STATE/$name.pid"
    local i
    for ((i = 0; i < 100; i++)); do
        pid_alive "$name" && tcp_listening "$1" && return 0
        sleep 0.05
    done
    die "relay $NODE_IP:$1 -> 127.0.0.1:$2 did not start (log: $STATE/logs/$name.log)"
}

tcp_listening() { (exec 3<>"/dev/tcp/$NODE_IP/$1") 2>/dev/null; }

kubectl_admin() { "$BIN/kubectl" --kubeconfig="$STATE/kubeconfig" "$@"; }

gen_node_pki() {
    local d="$STATE/pki"
    if [[ ! -f $d/kubelet.crt ]]; then
        printf 'basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\nsubjectAltName = IP:%s, DNS:%s\n' \
            "$NODE_IP" "$NODE_NAME" >"$d/kubelet.ext"
        openssl req -new -nodes -newkey rsa:2048 -subj "/CN=$NODE_NAME" \
            -keyout "$d/kubelet.key" -out "$d/kubelet.csr" 2>/dev/null
        openssl x509 -req -sha256 -days 3650 -in "$d/kubelet.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" \
            -CAcreateserial -extfile "$d/kubelet.ext" -out "$d/kubelet.crt" 2>/dev/null
        chmod 600 "$d/kubelet.key"
    fi
}

write_node_config() {
    local d="$STATE/node"
    mkdir -p "$d/cni"
    echo "nameserver 127.0.0.1" >"$d/resolv.conf"
    cat >"$d/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
tlsCertFile: $STATE/pki/kubelet.crt
tlsPrivateKeyFile: $STATE/pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $STATE/pki/ca.crt}
authorization: {mode: AlwaysAllow}
resolvConf: $d/resolv.conf
serializeImagePulls: false
imageGCHighThresholdPercent: 95
imageGCLowThresholdPercent: 90
evictionHard: {"memory.available": "200Mi", "nodefs.available": "2%", "imagefs.available": "2%"}
EOF
    cat >"$d/cni/10-molam.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "molam-pods",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "subnet": "$POD_CIDR",
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$d/ipam"
      }
    },
    {"type": "loopback"}
  ]
}
EOF
    write_kubeconfig "$d/node.kubeconfig" "$(<"$STATE/node.token")" "system:node:$NODE_NAME"
}

node_untainted() {
    [[ -z $(kubectl_admin get node "$NODE_NAME" -o 'jsonpath={.spec.taints}' 2>/dev/null) ]]
}

service_rules() { iptables -t nat -S KUBE-SERVICES 2>/dev/null | grep -q "default/kubernetes:https"; }

# Pods may reach this machine only: whatever they send towards another interface is dropped
# (the host forwards for the bridge, and its default route leads off the machine).
guard_forwarding() {
    iptables -N MOLAM-NODE-GUARD 2>/dev/null || true
    iptables -F MOLAM-NODE-GUARD
    iptables -A MOLAM-NODE-GUARD -i "$BRIDGE" -o "$BRIDGE" -j RETURN
    iptables -A MOLAM-NODE-GUARD -i "$BRIDGE" -j DROP
    iptables -A MOLAM-NODE-GUARD -o "$BRIDGE" -j DROP
    iptables -C FORWARD -j MOLAM-NODE-GUARD 2>/dev/null || iptables -I FORWARD 1 -j MOLAM-NODE-GUARD
}

node_ready() {
    local out
    out=$(kubectl_admin get node "$NODE_NAME" \
        -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) || return 1
    [[ $out == True ]]
}

# Pods reach the apiserver as in any cluster, through the `kubernetes` Service (10.0.0.1:443),
# which kube-proxy maps to these endpoints: the relay to the apiserver's loopback port.
set_apiserver_endpoints() {
    kubectl_admin apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Endpoints
metadata: {name: kubernetes, namespace: default}
subsets:
- addresses: [{ip: $NODE_IP}]
  ports: [{name: https, port: $APISERVER_RELAY_PORT, protocol: TCP}]
EOF
}

node_up() {
    have_k8s_bins || die "the kubernetes binaries are not built (stack/kube.sh build)"
    is_up || die "the control plane in $STATE is not up (stack/kube.sh up $STATE)"
    [[ -s $STATE/node.token ]] || die "$STATE/node.token missing: start the control plane with this kube.sh"
    install_node_packages
    cmd_address >/dev/null
    guard_forwarding
    gen_node_pki
    write_node_config
    # shellcheck disable=SC1091
    source "$STATE/ports.env"
    local relay port target
    for relay in "$APISERVER_RELAY_PORT:$APISERVER_PORT" "$@"; do
        port=${relay%%:*}
        target=${relay#*:}
        pid_alive "relay-$port" || start_relay "$port" "$target"
    done
    set_apiserver_endpoints

    local nk="$STATE/node/node.kubeconfig"
    if ! pid_alive kube-scheduler; then
        log "starting kube-scheduler"
        start_proc kube-scheduler --kubeconfig="$nk" --leader-elect=false \
            --bind-address=127.0.0.1 --secure-port=0 --port=0
    fi
    if ! pid_alive kubelet; then
        log "starting kubelet on $NODE_IP (Docker, CNI bridge $BRIDGE $POD_CIDR)"
        as_root mkdir -p "$KUBELET_ROOT"
        start_proc kubelet --kubeconfig="$nk" --config="$STATE/node/kubelet.yaml" \
            --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --root-dir="$KUBELET_ROOT" \
            --container-runtime=docker --pod-infra-container-image="$PAUSE_IMAGE" \
            --network-plugin=cni --cni-bin-dir=/usr/lib/cni --cni-conf-dir="$STATE/node/cni" \
            --cni-cache-dir="$STATE/node/cni-cache" --v=1
    fi
    if ! pid_alive kube-proxy; then
        log "starting kube-proxy (iptables)"
        # --masquerade-all: a pod reaching a Service backed by a pod on the same bridge gets its
        # reply through the host's conntrack (there is no br_netfilter here).
        start_proc kube-proxy --kubeconfig="$nk" --proxy-mode=iptables --masquerade-all \
            --cluster-cidr="$POD_CIDR" --hostname-override="$NODE_NAME" \
            --bind-address=127.0.0.1 --healthz-bind-address=127.0.0.1:10256 \
            --metrics-bind-address=127.0.0.1:10249 --conntrack-max-per-core=0
    fi
    wait_for "node $NODE_NAME Ready" 120 kubelet node_ready
    wait_for "the node-lifecycle controller to lift the not-ready taint" 60 kubelet node_untainted
    wait_for "kube-proxy's rules for the kubernetes Service" 60 kube-proxy service_rules
    log "node $NODE_NAME Ready ($NODE_IP, pods $POD_CIDR)"
    echo "NODE_IP=$NODE_IP"
}

node_down() {
    local p pid i
    # Pod containers first, while the kubelet cannot restart them: the node's pods are gone.
    for p in "${NODE_PROCS[@]}" $(cd "$STATE" && ls relay-*.pid 2>/dev/null | sed 's/\.pid$//'); do
        if pid_alive "$p"; then
            pid=$(<"$STATE/$p.pid")
            kill -TERM "$pid" 2>/dev/null || true
            for ((i = 0; i < 100; i++)); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
            [[ -d /proc/$pid ]] && kill -KILL "$pid" 2>/dev/null
        fi
        rm -f "$STATE/$p.pid"
    done
    if [[ -x /usr/bin/docker ]] && /usr/bin/docker info >/dev/null 2>&1; then
        local ids
        ids=$(/usr/bin/docker ps -aq --filter "label=io.kubernetes.pod.namespace")
        # shellcheck disable=SC2086
        [[ -z $ids ]] || /usr/bin/docker rm -f $ids >/dev/null 2>&1 || true
    fi
    log "node down"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    case "${1:-}" in
        up) shift; set_state "${1:-}"; shift; node_up "$@" ;;
        down) shift; set_state "${1:-}"; node_down ;;
        address) cmd_address ;;
        *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
    esac
fi
