"""The Kubernetes "restricted" Pod Security Standard (kubernetes.io/docs/concepts/security/pod-security-standards,
v1.30), checked on a pod spec the way the admission controller checks it, plus a read-only root filesystem,
which the standard leaves optional and this project asks of every pod it defines."""

from __future__ import annotations

from typing import Any

ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
ALLOWED_SECCOMP = {"RuntimeDefault", "Localhost"}


def restricted_violations(pod: dict[str, Any], read_only_root: bool = True) -> list[str]:
    """What in `pod` (a PodSpec) the restricted standard refuses; empty when it is admitted."""
    problems = []
    pod_context = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"pod: {flag}")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(f"volume {volume['name']}: type {sorted(kinds - ALLOWED_VOLUMES)}")
    if pod_context.get("runAsUser") == 0:
        problems.append("pod: runAsUser 0")
    for container in pod.get("initContainers", []) + pod.get("containers", []):
        name, context = container["name"], container.get("securityContext", {})
        capabilities = context.get("capabilities", {})
        if context.get("privileged"):
            problems.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
        if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if context.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
        if seccomp.get("type") not in ALLOWED_SECCOMP:
            problems.append(f"{name}: seccompProfile is not RuntimeDefault or Localhost")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            problems.append(f"{name}: hostPort")
        if read_only_root and context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: root filesystem is writable")
    return problems
