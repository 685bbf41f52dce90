"""Turn a Kubernetes release's OpenAPI v2 spec into kubeconform's strict JSON schemas.

No schema website is reachable from CI, but the ``k8s.io/kubernetes`` Go module of
a pinned release ships ``api/openapi-spec/swagger.json``. For every kind in it this
writes ``<out>/<kind>-<group prefix>-<version>.json`` (kubeconform's
``{{ .ResourceKind }}{{ .KindSuffix }}.json`` naming), holding the kind's schema and
the definitions it references. "Strict" as kubeconform means it: every object that
lists its properties refuses any other, so a misspelt or misplaced field is an
error, not silently dropped by the API server.

Usage: python openapi2jsonschema.py SWAGGER_JSON OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

_PREFIX = "#/definitions/"
# Types whose wire form is not what swagger.json says (both accept a number).
_SPECIAL: dict[str, dict[str, Any]] = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {
        "oneOf": [{"type": "string"}, {"type": "integer"}]
    },
    "io.k8s.apimachinery.pkg.api.resource.Quantity": {
        "oneOf": [{"type": "string"}, {"type": "number"}]
    },
}


def _strict(node: Any) -> Any:
    """A copy of ``node`` where objects with listed properties refuse others."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _strict(value) for key, value in node.items() if key != "description"}
    if "properties" in out:
        # properties holds field names, not schemas keyed by keyword: undo the walk.
        out["properties"] = {name: _strict(schema) for name, schema in node["properties"].items()}
        out.setdefault("additionalProperties", False)
    return out


def _references(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_PREFIX):
            found.add(ref[len(_PREFIX) :])
        for value in node.values():
            _references(value, found)
    elif isinstance(node, list):
        for item in node:
            _references(item, found)


def _closure(name: str, definitions: dict[str, Any]) -> set[str]:
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        found: set[str] = set()
        _references(definitions[current], found)
        todo.extend(found - seen)
    return seen


def file_name(kind: str, group: str, version: str) -> str:
    """kubeconform's name for a kind: ``daemonset-apps-v1.json``, ``pod-v1.json``."""
    suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix.lower()}.json"


def convert(swagger: dict[str, Any], out_dir: str) -> int:
    """Write one schema per kind; returns how many were written."""
    definitions = {
        name: _SPECIAL.get(name) or _strict(schema)
        for name, schema in swagger["definitions"].items()
    }
    os.makedirs(out_dir, exist_ok=True)
    written = 0
    for name, schema in swagger["definitions"].items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            needed = _closure(name, definitions) - {name}
            document = dict(definitions[name])
            document["$schema"] = "http://json-schema.org/draft-04/schema#"
            document["definitions"] = {dep: definitions[dep] for dep in sorted(needed)}
            path = os.path.join(out_dir, file_name(gvk["kind"], gvk["group"], gvk["version"]))
            with open(path, "w") as handle:
                json.dump(document, handle, sort_keys=True)
            written += 1
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0]) as handle:
        swagger = json.load(handle)
    count = convert(swagger, argv[1])
    print(f"wrote {count} strict schemas to {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
