#!/usr/bin/env bash
# Copies the CRDs from the top-level crds/ (the source of truth, written with the operator) into
# the chart's crds/ folder, which Helm installs before the templates. A test fails when the two
# differ: run this after changing a CRD.
#
#   charts/sync-crds.sh          copy
#   charts/sync-crds.sh --check  exit 1 (and list the files) if the chart's copy is stale
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src="$root/crds"
dst="$root/charts/molam-analytics/crds"

shopt -s nullglob
files=("$src"/*.yaml)
[[ ${#files[@]} -gt 0 ]] || { echo "no CRDs in $src" >&2; exit 1; }

if [[ ${1:-} == --check ]]; then
    status=0
    for f in "${files[@]}"; do
        cmp -s "$f" "$dst/$(basename "$f")" || { echo "stale: $dst/$(basename "$f")"; status=1; }
    done
    for f in "$dst"/*.yaml; do
        [[ -f "$src/$(basename "$f")" ]] || { echo "extra: $f"; status=1; }
    done
    exit $status
fi

mkdir -p "$dst"
rm -f "$dst"/*.yaml
cp "${files[@]}" "$dst/"
echo "copied ${#files[@]} CRD file(s) to $dst"
