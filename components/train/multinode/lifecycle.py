"""A training job's life, the same for both engines: delete what an earlier attempt left, create the job,
stream its pods' logs, wait for it to end, delete it (also when this pod is terminated) and, when it
failed, name the failing pods' last lines. What sets the engines apart is a `JobKind` (job.py: PyTorchJob,
trainjob.py: TrainJob)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from components.train.multinode.kube import (
    JobSpec,
    LogStreamer,
    default_api_client,
    delete_leftover,
    delete_object,
    exit_on_sigterm,
)

FAILED_POD_LINES = 20


@dataclass(frozen=True)
class JobKind:
    """One engine's job as `run_job` sees it."""

    name: str  # the resource's kind, e.g. TrainJob
    resource: tuple[str, str, str]  # API group, version and plural
    container: str  # the pods' training container, whose log is read
    create: Callable[[Any, tuple, Any], None]  # (CustomObjectsApi, address, spec): create the object
    state: Callable[[dict[str, Any]], tuple[str | None, str]]  # (Succeeded | Failed | None, message)
    pod_selector: Callable[[str], str]  # the job's name -> the label selector of its pods
    streams: Callable[[Any], bool]  # whether to follow this pod's log
    runs_on: Callable[[Any], str] = lambda spec: ""  # what the announcing line adds after the job's name
    progress: Callable[[dict[str, Any], list], str] | None = None  # (job, its pods) -> where it stands


def run_job(
    kind: JobKind,
    spec: JobSpec,
    api_client=None,
    poll_s: float = 10.0,
    timeout_s: float | None = None,
    keep: bool = False,
    echo: Callable[[str], None] = print,
) -> str:
    """Create the job, stream its pods' logs, wait for it to end, delete it; return 'Succeeded'.

    A job left by an earlier attempt of the same KFP task (same name) is deleted first. Raises
    RuntimeError with the failing pods' last lines when the job fails, and TimeoutError after
    `timeout_s`; the job is deleted either way unless `keep`."""
    from kubernetes import client

    api_client = api_client or default_api_client()
    custom, core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
    address = (*kind.resource[:2], spec.namespace, kind.resource[2])
    previous_handler = exit_on_sigterm(kind.name)  # before the job exists: no window that orphans it
    delete_leftover(custom, address, spec.name, poll_s, kind.name)
    streamer = LogStreamer(core, spec.namespace, echo, kind.container)
    started, reported, failure = time.monotonic(), "", ""
    try:
        kind.create(custom, address, spec)
        echo(
            f"{kind.name} {spec.namespace}/{spec.name}{kind.runs_on(spec)}: "
            f"{spec.nodes} node(s) x {spec.gpus_per_node} GPU(s)"
        )
        while True:
            job = custom.get_namespaced_custom_object(*address, spec.name)
            selector = kind.pod_selector(spec.name)
            pods = core.list_namespaced_pod(spec.namespace, label_selector=selector).items
            for pod in pods:
                if kind.streams(pod):
                    streamer.follow(pod.metadata.name)
            if kind.progress is not None and (line := kind.progress(job, pods)) != reported:
                echo(f"{kind.name} {spec.name}: {line}")
                reported = line
            state, message = kind.state(job)
            if state is not None:
                if state == "Failed":
                    failure = failed_pods_report(core, spec.namespace, kind.container, pods)
                break
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise TimeoutError(f"{kind.name} {spec.name} still running after {timeout_s:.0f}s")
            time.sleep(poll_s)
        streamer.join(timeout_s=30)
    finally:
        if not keep:
            delete_object(custom, address, spec.name)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    echo(f"{kind.name} {spec.name}: {state} {message}".rstrip())
    if state != "Succeeded":
        raise RuntimeError(
            f"{kind.name} {spec.namespace}/{spec.name} failed: {message or 'see the logs above'}{failure}"
        )
    return state


def failed_pods_report(core, namespace: str, container: str, pods: list) -> str:
    """The last lines of each failed pod's log, one block a pod ("" when none failed)."""
    return "".join(
        f"\nlast lines of {pod.metadata.name}:\n{last_lines(core, namespace, pod.metadata.name, container)}"
        for pod in pods
        if pod.status.phase == "Failed"
    )


def last_lines(core, namespace: str, pod_name: str, container: str, lines: int = FAILED_POD_LINES) -> str:
    from kubernetes.client.exceptions import ApiException

    try:
        return core.read_namespaced_pod_log(pod_name, namespace, container=container, tail_lines=lines)
    except ApiException as error:
        return f"(its log cannot be read: {error.reason})"
