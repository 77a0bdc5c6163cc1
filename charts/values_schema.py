"""Writes the pipeline part of the chart's values.schema.json from the AnalyticsPipeline CRD.

The chart's ``pipeline`` values are the CRD's ``spec`` fields, passed to the AnalyticsPipeline as
they are, plus the chart's own keys (``create``, ``name``, ``namespace``, ``extraSpec``,
``secrets``; hand-written in the schema file and kept). Every spec field's schema is the CRD's
openAPIV3Schema (top-level crds/, the source of truth) translated to JSON Schema, so the chart
accepts what the CRD accepts and refuses the rest:

* ``x-kubernetes-*`` keys go; OpenAPI's ``exclusiveMinimum: true`` beside ``minimum`` becomes
  JSON Schema's ``exclusiveMinimum: <minimum>`` (the same for maximum);
* an object with ``properties`` gets ``additionalProperties: false``: the API server would prune
  an unknown field silently, the chart names it instead;
* ``image`` may be empty in the values: the chart then uses its own image.

  python charts/values_schema.py          write values.schema.json
  python charts/values_schema.py --check  exit 1 if the committed file differs

charts/sync-crds.sh runs it after copying the CRDs, and its ``--check`` checks both.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "crds" / "analyticspipelines.yaml"
SCHEMA = ROOT / "charts" / "molam-analytics" / "values.schema.json"

# The chart's own pipeline values, around the spec fields (templates/pipeline.yaml leaves them
# out of the spec).
CHART_KEYS_BEFORE = ("create", "name", "namespace")
CHART_KEYS_AFTER = ("extraSpec", "secrets")
IMAGE_DESCRIPTION = "Image of the workloads; empty: the chart's image (image.repository:tag)."


def crd_spec_schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    spec: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return spec


def to_json_schema(node: Any) -> Any:
    """An OpenAPI v3 (structural) schema as JSON Schema draft-07."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-"):
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            if value:
                out[key] = node[bound]
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "allOf", "oneOf", "not"):
            out[key] = to_json_schema(value)
        else:
            out[key] = value
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        bound = "minimum" if key == "exclusiveMinimum" else "maximum"
        if node.get(key) is True:
            out.pop(bound, None)
    if node.get("nullable") is True:
        out.pop("nullable")
        out["type"] = [out["type"], "null"]
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def pipeline_schema(spec: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """``current``'s pipeline schema with every spec field's schema taken from ``spec``."""
    fields = {name: to_json_schema(sub) for name, sub in spec["properties"].items()}
    image = dict(fields["image"])
    image.pop("minLength", None)
    image["description"] = IMAGE_DESCRIPTION
    fields["image"] = image
    mine = current.get("properties") or {}
    chart_keys = (*CHART_KEYS_BEFORE, *CHART_KEYS_AFTER)
    unknown = set(mine) - set(fields) - set(chart_keys)
    if unknown:
        raise SystemExit(f"pipeline values neither in the CRD nor the chart's: {sorted(unknown)}")
    missing = [k for k in chart_keys if k not in mine]
    if missing:
        raise SystemExit(f"the chart's own pipeline values lost their schema: {missing}")
    properties = {k: mine[k] for k in CHART_KEYS_BEFORE}
    properties |= fields
    properties |= {k: mine[k] for k in CHART_KEYS_AFTER}
    return {
        **{k: v for k, v in current.items() if k not in ("properties", "additionalProperties")},
        "properties": properties,
        "additionalProperties": False,
    }


def generate(schema_text: str, crd_text: str) -> str:
    schema = json.loads(schema_text)
    spec = crd_spec_schema(yaml.safe_load(crd_text))
    props = schema["properties"]
    props["pipeline"] = pipeline_schema(spec, props["pipeline"])
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    check = argv[1:] == ["--check"]
    if argv[1:] and not check:
        print(__doc__, file=sys.stderr)
        return 2
    current = SCHEMA.read_text()
    wanted = generate(current, CRD.read_text())
    if check:
        if wanted != current:
            print(f"stale: {SCHEMA} (run charts/sync-crds.sh)")
            return 1
        return 0
    SCHEMA.write_text(wanted)
    print(f"wrote the pipeline part of {SCHEMA} from {CRD.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
