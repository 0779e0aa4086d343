"""A small `kustomize build` for the features manifests/ uses, so the rendering is checked on machines
without kubectl: resources (files and nested kustomizations), strategic-merge patches (by file or inline,
`$patch: delete` included), namespace, labels (metadata only) and images.

Anything else in a kustomization is refused by name, so a new kustomize feature in manifests/ fails the
tests loudly instead of rendering wrongly. Where kubectl is installed, the tests compare this renderer's
output with `kubectl kustomize`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "patches", "namespace", "labels", "images"}
# Kinds the namespace transformer leaves alone (cluster-scoped).
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Profile"}


def build(directory: Path) -> list[dict]:
    """The resources `kustomize build directory` would print (in file order, not kustomize's kind order)."""
    directory = Path(directory)
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED
    if unsupported:
        raise ValueError(f"{directory}/kustomization.yaml: unsupported fields {sorted(unsupported)}")

    resources: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        resources.extend(build(path) if path.is_dir() else _load(path))

    for patch in kustomization.get("patches", []):
        if set(patch) - {"path", "patch"}:
            raise ValueError(f"{directory}: only `path` and `patch` patches are supported, got {patch}")
        documents = _load(directory / patch["path"]) if "path" in patch else _documents(patch["patch"])
        for document in documents:
            resources = _apply_patch(resources, document)

    if "namespace" in kustomization:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = kustomization["namespace"]
    for label in kustomization.get("labels", []):
        if label.get("includeSelectors") or label.get("includeTemplates"):
            raise ValueError(f"{directory}: labels with includeSelectors/includeTemplates are not supported")
        for resource in resources:
            resource["metadata"].setdefault("labels", {}).update(label["pairs"])
    for image in kustomization.get("images", []):
        for container in _containers(resources):
            _set_image(container, image)
    return resources


def _documents(text: str) -> list[dict]:
    return [document for document in yaml.safe_load_all(text) if document]


def _load(path: Path) -> list[dict]:
    return _documents(path.read_text())


def _same_resource(resource: dict, patch: dict) -> bool:
    namespace = patch["metadata"].get("namespace")
    return (
        resource["kind"] == patch["kind"]
        and resource["metadata"]["name"] == patch["metadata"]["name"]
        and (namespace is None or resource["metadata"].get("namespace") == namespace)
    )


def _apply_patch(resources: list[dict], patch: dict) -> list[dict]:
    targets = [resource for resource in resources if _same_resource(resource, patch)]
    if len(targets) != 1:
        raise ValueError(
            f"patch {patch['kind']}/{patch['metadata']['name']} matches {len(targets)} resources"
        )
    if patch.get("$patch") == "delete":
        return [resource for resource in resources if resource is not targets[0]]
    merged = _merge(targets[0], patch)
    return [merged if resource is targets[0] else resource for resource in resources]


def _merge(base, patch):
    """Strategic merge as kustomize does it for these manifests: maps merge key by key, lists of named
    items merge by name, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        merged = copy.deepcopy(base)
        for item in patch:
            index = next((i for i, old in enumerate(merged) if old["name"] == item["name"]), None)
            if index is None:
                merged.append(copy.deepcopy(item))
            else:
                merged[index] = _merge(merged[index], item)
        return merged
    return copy.deepcopy(patch)


def _named(items: list) -> bool:
    return all(isinstance(item, dict) and "name" in item for item in items)


def _containers(resources: list[dict]):
    for resource in resources:
        pod = resource.get("spec", {}).get("template", {}).get("spec", {})
        yield from pod.get("initContainers", [])
        yield from pod.get("containers", [])


def _set_image(container: dict, image: dict) -> None:
    reference = container["image"]
    name = reference.split("@", 1)[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    if name != image["name"]:
        return
    new_name = image.get("newName", name)
    if "digest" in image:
        container["image"] = f"{new_name}@{image['digest']}"
    elif "newTag" in image:
        container["image"] = f"{new_name}:{image['newTag']}"
    else:
        container["image"] = new_name + reference[len(name) :]
