"""Vendor the RayCluster/RayJob CRD schemas the manifest test validates against (data, not code).

    python ray_cluster/kuberay/crd/vendor.py <kuberay checkout> v1.7.0

Reads ``ray-operator/config/crd/bases/ray.io_{rayclusters,rayjobs}.yaml`` at the given tag (git show), keeps the
``v1`` version's ``openAPIV3Schema`` without ``status`` and without ``description`` texts (90 % of the 2.3 MB), and
writes ``{kind}.v1.schema.json.gz`` beside this file with the source (repository, tag, commit, path) in
``SOURCE.json``. The schema itself is unchanged; the test turns it into strict JSON Schema (see the test's
``strict``), as ``kubectl apply`` (server-side field validation, Strict by default) does.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CRDS = {"RayCluster": "ray-operator/config/crd/bases/ray.io_rayclusters.yaml",
        "RayJob": "ray-operator/config/crd/bases/ray.io_rayjobs.yaml"}


def _strip(node):
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def main(checkout: str, tag: str) -> None:
    commit = subprocess.run(["git", "-C", checkout, "rev-parse", f"{tag}^{{commit}}"], check=True,
                            capture_output=True, text=True).stdout.strip()
    source = {"repository": "https://github.com/ray-project/kuberay", "tag": tag, "commit": commit, "files": {}}
    for kind, path in CRDS.items():
        text = subprocess.run(["git", "-C", checkout, "show", f"{commit}:{path}"], check=True, capture_output=True,
                              text=True).stdout
        crd = yaml.safe_load(text)
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        schema = _strip(version["schema"]["openAPIV3Schema"])
        schema["properties"].pop("status", None)
        out = HERE / f"{kind.lower()}.v1.schema.json.gz"
        out.write_bytes(gzip.compress(json.dumps(schema, sort_keys=True, separators=(",", ":")).encode(), mtime=0))
        source["files"][out.name] = {"path": path, "group": crd["spec"]["group"], "kind": kind, "version": "v1"}
    (HERE / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
