#!/usr/bin/env bash
# Copies the CRDs from the top-level crds/ (the source of truth, written with the operator) into
# the chart's crds/ folder, which Helm installs before the templates, and regenerates the
# pipeline part of the chart's values.schema.json from the AnalyticsPipeline CRD
# (charts/values_schema.py). Tests fail when either is stale: run this after changing a CRD.
#
#   charts/sync-crds.sh          copy and generate
#   charts/sync-crds.sh --check  exit 1 (and list the files) if the copy or the schema is stale
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src="$root/crds"
dst="$root/charts/molam-analytics/crds"
# The generator reads YAML: the project's virtualenv has PyYAML (PYTHON overrides).
python=${PYTHON:-$root/.venv/bin/python}
[[ -x $python ]] || python=python3

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
    "$python" "$root/charts/values_schema.py" --check || status=1
    exit $status
fi

mkdir -p "$dst"
rm -f "$dst"/*.yaml
cp "${files[@]}" "$dst/"
echo "copied ${#files[@]} CRD file(s) to $dst"
"$python" "$root/charts/values_schema.py"
