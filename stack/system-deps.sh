#!/usr/bin/env bash
# Debian packages some tests need and pip cannot provide; installs only what is missing.
#   chromium  headless browser for the dashboard test (tests/workloads/api/test_dashboard.py)
#   wrk       HTTP load generator of bench/api.py
#   prometheus-alertmanager  a real Alertmanager 0.25 + amtool (tests/workloads/alerts)
#   prometheus  a real Prometheus 2.42 + promtool (tests/charts/test_prometheus*.py)
# Idempotent: run as root (or with sudo available); a no-op when everything is present.
set -euo pipefail

PACKAGES=(chromium wrk prometheus-alertmanager prometheus)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "system-deps: need root to install: ${missing[*]}" >&2
        exit 1
    fi
fi

echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
