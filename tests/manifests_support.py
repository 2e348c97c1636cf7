"""A small kustomize for the tests: renders this project's kustomizations without the kustomize binary.

It implements the subset our kustomizations use and refuses anything else, so a manifest can never rely
on a feature that the tests silently skip: ``resources`` (files and directories), ``namespace``,
``labels`` (without selectors) and ``patches`` (strategic-merge patches given by ``path``). The
strategic merge follows Kubernetes' merge keys for the lists our patches touch (containers, env,
volumes, volumeMounts, ports) and deletes a field patched to ``null``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "manifests"

Doc = dict[str, Any]

SUPPORTED_KEYS = {"apiVersion", "kind", "namespace", "labels", "resources", "patches"}

# Kinds without a namespace; every other kind we ship is namespaced.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "ClusterIssuer", "RuntimeClass"}

# Strategic-merge keys of the lists our patches reach (Kubernetes' patchMergeKey for each field).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}


class KustomizeError(ValueError):
    """The kustomization uses something this renderer does not implement, or a patch finds no target."""


def load_docs(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    """``patch`` merged into ``base`` (neither is modified)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value, key)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        out_list = copy.deepcopy(base)
        for item in patch:
            if not isinstance(item, dict) or key not in item:
                raise KustomizeError(f"list {field!r}: patch item without its merge key {key!r}: {item!r}")
            match = next((i for i, old in enumerate(out_list) if old.get(key) == item[key]), None)
            if match is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[match] = strategic_merge(out_list[match], item, field)
        return out_list
    return copy.deepcopy(patch)


def _same_object(doc: Doc, patch: Doc) -> bool:
    if (doc["apiVersion"], doc["kind"], doc["metadata"]["name"]) != (
        patch["apiVersion"],
        patch["kind"],
        patch["metadata"]["name"],
    ):
        return False
    wanted = patch["metadata"].get("namespace")
    return wanted is None or doc["metadata"].get("namespace") == wanted


def _apply_patch(docs: list[Doc], patch: Doc, source: Path) -> list[Doc]:
    targets = [i for i, d in enumerate(docs) if _same_object(d, patch)]
    if len(targets) != 1:
        raise KustomizeError(f"{source}: patch must match exactly one object, matched {len(targets)}")
    docs = list(docs)
    docs[targets[0]] = strategic_merge(docs[targets[0]], patch)
    return docs


def _add_labels(doc: Doc, pairs: dict[str, str], include_templates: bool) -> Doc:
    doc = copy.deepcopy(doc)
    doc["metadata"].setdefault("labels", {}).update(pairs)
    template = doc.get("spec", {}).get("template")
    if include_templates and isinstance(template, dict):
        template.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    return doc


def build(directory: Path) -> list[Doc]:
    """The objects ``kustomize build directory`` would print (for the subset described above)."""
    kustomization_path = directory / "kustomization.yaml"
    if not kustomization_path.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    k = yaml.safe_load(kustomization_path.read_text())
    unknown = set(k) - SUPPORTED_KEYS
    if unknown:
        raise KustomizeError(f"{kustomization_path}: unsupported fields {sorted(unknown)}")
    docs: list[Doc] = []
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        docs.extend(build(path) if path.is_dir() else load_docs(path))
    for entry in k.get("patches", []):
        if set(entry) != {"path"}:
            raise KustomizeError(f"{kustomization_path}: only patches given by 'path' are supported: {entry}")
        path = directory / entry["path"]
        for patch in load_docs(path):
            docs = _apply_patch(docs, patch, path)
    if "namespace" in k:
        for doc in docs:
            if doc["kind"] == "Namespace":
                if doc["metadata"]["name"] != k["namespace"]:
                    raise KustomizeError(f"{kustomization_path}: a Namespace other than {k['namespace']!r}")
            elif doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = k["namespace"]
    for label in k.get("labels", []):
        if label.get("includeSelectors"):
            raise KustomizeError(f"{kustomization_path}: labels with includeSelectors are not supported")
        docs = [_add_labels(d, label["pairs"], bool(label.get("includeTemplates"))) for d in docs]
    ids = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1}, key=str)
    if duplicates:
        raise KustomizeError(f"{directory}: objects defined twice: {duplicates}")
    return docs


def kustomization_dirs() -> list[Path]:
    """Every kustomization under manifests/ (each one must render on its own)."""
    return sorted(p.parent for p in MANIFESTS.rglob("kustomization.yaml"))


def pod_spec(doc: Doc) -> Doc | None:
    """The pod spec of a workload object, or None for other kinds."""
    if doc["kind"] in {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"}:
        spec: Doc = doc["spec"]["template"]["spec"]
        return spec
    return None
