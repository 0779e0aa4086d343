"""Multi-node training on both sides of the training job (a TrainJob or a PyTorchJob):
`run_multinode_training` in the KFP train pod, `worker_main` in each of the job's node pods
(`python -m components.train.multinode`)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from components.common.config import set_dotted, to_dict
from components.common.errors import ConfigError
from components.common.store import open_store
from components.train.multinode.engine import choose_engine
from components.train.multinode.job import PyTorchJobSpec, run_pytorchjob
from components.train.multinode.kube import current_namespace, default_api_client, job_name_for, this_pod
from components.train.multinode.trainjob import DEFAULT_RUNTIME, TrainJobSpec, run_trainjob

# JSON payload for worker_main: fields, inputs, downloads, outputs, nodes, gpus_per_node, module
JOB_ENV = "DISTILL_TRAIN_JOB"
OUTPUT_FIELDS = ("output_dir", "tensorboard_dir")

log = logging.getLogger(__name__)


def run_multinode_training(
    fields: dict[str, Any],
    inputs: dict[str, str],
    *,
    store_uri: str,
    run_id: str,
    nodes: int,
    gpus_per_node: int,
    image: str | None = None,
    namespace: str | None = None,
    env_from_secrets: dict[str, dict[str, str]] | None = None,
    env_from_config_maps: dict[str, dict[str, str]] | None = None,
    optional_secrets: list[str] | None = None,
    downloads: dict[str, str] | None = None,
    engine: str = "auto",
    runtime: str = DEFAULT_RUNTIME,
    module: str = "components.train",
    api_client=None,
    poll_s: float = 10.0,
    pod_name: str | None = None,
    echo=print,
    **job_settings: Any,
) -> dict[str, Any]:
    """Train as a TrainJob or PyTorchJob (`engine`: auto picks the one the cluster serves, TrainJob
    first) and leave the outputs in `fields`' local output folders, like a local run.

    `fields` is the train Config as a dict (its output_dir and tensorboard_dir are this pod's folders);
    `inputs` maps the input fields (student_dir, data_dir) to store URIs the job's pods can read, e.g.
    the KFP artifacts' `.uri`; `downloads` maps (dotted) fields to download-stage sources that the pods
    fetch through the download cache in the store, as this pod did (kd.teacher_dir: the KD teacher).
    The job's pods run this pod's own image with its image pull secrets unless `image` is given, and
    the job is owned by this pod (`pod_name`, default $HOSTNAME). A TrainJob names the training runtime
    `runtime`. `job_settings` go to the job's spec (cpu, memory, node_selector, tolerations, queue_name,
    priority_class, ...). Returns the trained output's train_summary.json."""
    from kubernetes import client

    if not store_uri:
        raise ConfigError(
            "store_uri: multi-node training passes inputs and outputs through the store; set s3://..."
        )
    api_client = api_client or default_api_client()
    engine = choose_engine(engine, api_client)
    namespace = namespace or current_namespace()
    pod = this_pod(client.CoreV1Api(api_client), namespace, pod_name or os.environ.get("HOSTNAME"))
    if image is None:
        if pod is None:
            raise ConfigError(
                "image: not running in a KFP pod, so there is no image to reuse; pass the train image"
            )
        containers = {container.name: container.image for container in pod.spec.containers}
        image = containers.get("main") or pod.spec.containers[0].image  # KFP names its executor "main"
        job_settings.setdefault(
            "image_pull_secrets", [secret.name for secret in pod.spec.image_pull_secrets or []]
        )
    staging = f"{store_uri.rstrip('/')}/runs/{run_id}/train/multinode"
    outputs = {name: f"{staging}/{name}" for name in OUTPUT_FIELDS}
    for uri in outputs.values():
        open_store(uri).delete("")  # leftovers of an earlier attempt must not mix into this one
    payload = {
        "fields": fields,
        "inputs": inputs,
        "downloads": {
            name: {"source": source, "store_uri": store_uri} for name, source in (downloads or {}).items()
        },
        "outputs": outputs,
        "nodes": nodes,
        "gpus_per_node": gpus_per_node,
        "module": module,
    }
    common = dict(
        name=job_name_for(run_id),
        namespace=namespace,
        image=image,
        command=["python", "-m", "components.train.multinode"],
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        env={JOB_ENV: json.dumps(payload)},
        env_from_secrets=env_from_secrets or {},
        env_from_config_maps=env_from_config_maps or {},
        optional_secrets=optional_secrets or [],
        labels={"app.kubernetes.io/part-of": "kfp-distill", "app.kubernetes.io/component": "train"},
        owner_pod={"name": pod.metadata.name, "uid": pod.metadata.uid} if pod is not None else None,
        **job_settings,
    )
    if engine == "trainjob":
        run_trainjob(TrainJobSpec(runtime=runtime, **common), api_client=api_client, poll_s=poll_s, echo=echo)
    else:
        run_pytorchjob(PyTorchJobSpec(**common), api_client=api_client, poll_s=poll_s, echo=echo)
    open_store(outputs["output_dir"]).download_dir("", Path(fields["output_dir"]))
    tensorboard = open_store(outputs["tensorboard_dir"])
    if tensorboard.list(""):  # a run that logged nothing leaves no TensorBoard folder
        tensorboard.download_dir("", Path(fields["tensorboard_dir"]))
    summary = Path(fields["output_dir"]) / "train_summary.json"
    return json.loads(summary.read_text()) if summary.exists() else {}


def run_as_job(
    config,
    model_uri: str,
    data_uri: str,
    nodes: int,
    gpus_per_node: int,
    job_env: dict[str, dict[str, dict[str, str]]],
    kd_teacher_source: str = "",
    **job_settings: Any,
):
    """The train stage as a training job: this (CPU-only) pod checked `config` and only runs the job,
    on the engine, runtime and Kueue queue that `config.cluster` names.

    `model_uri`/`data_uri` are the KFP input artifacts' URIs; KFP's default MinIO root (minio://)
    is read through its S3 API. `job_env` holds the Secrets and ConfigMaps the job's pods get as
    environment: {"secrets": {name: {key: VAR}}, "config_maps": {name: {key: VAR}}}. The KD teacher
    (`kd_teacher_source`) reaches the pods through the store's download cache, which this pod filled:
    the folder config.kd.teacher_dir names exists in this pod only.
    """
    from components.common.model_sources import parse_source
    from components.train.stage import Result

    if config.kd.teacher_dir and not (kd_teacher_source and parse_source(kd_teacher_source).cacheable):
        raise ConfigError(
            "kd.teacher_dir: a folder of the train pod does not exist in the job's pods; give the teacher "
            "as train_kd_teacher_source (hf://, s3://) so that they fetch it from the store"
        )
    summary = run_multinode_training(
        to_dict(config),
        {"student_dir": _s3_uri(model_uri), "data_dir": _s3_uri(data_uri)},
        downloads={"kd.teacher_dir": kd_teacher_source} if kd_teacher_source else {},
        store_uri=config.store_uri,
        run_id=config.run_id,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        env_from_secrets=job_env.get("secrets", {}),
        env_from_config_maps=job_env.get("config_maps", {}),
        optional_secrets=job_env.get("optional_secrets", []),
        engine=config.cluster.engine,
        runtime=config.cluster.runtime,
        queue_name=config.cluster.queue_name,
        priority_class=config.cluster.priority_class,
        **job_settings,
    )
    return Result.from_summary(summary, config.output_dir)


def _s3_uri(uri: str) -> str:
    return "s3://" + uri[len("minio://") :] if uri.startswith("minio://") else uri


def node_rank(environ: dict[str, str]) -> int:
    """This pod's node rank: PET_NODE_RANK in Trainer v2 and newer Training Operators, RANK (the pod's
    index) in every Training Operator version."""
    return int(environ.get("PET_NODE_RANK") or environ.get("RANK") or 0)


def rendezvous(environ: dict[str, str]) -> tuple[str, str]:
    """Node 0's address and port: PET_MASTER_* from Trainer v2's torch policy, MASTER_* from the
    Training Operator."""
    address = environ.get("PET_MASTER_ADDR") or environ.get("MASTER_ADDR") or "127.0.0.1"
    return address, environ.get("PET_MASTER_PORT") or environ.get("MASTER_PORT") or "29500"


def worker_command(payload: dict[str, Any], config_file: Path, environ: dict[str, str]) -> list[str]:
    """torchrun for this node: rendezvous at node 0 as the engine announces it; node and GPU counts
    from the payload, since WORLD_SIZE means pods in old operators and processes in new ones."""
    address, port = rendezvous(environ)
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={payload['nodes']}",
        f"--nproc_per_node={max(payload['gpus_per_node'], 1)}",
        f"--node_rank={node_rank(environ)}",
        f"--master_addr={address}",
        f"--master_port={port}",
        "-m",
        payload["module"],
        "--config",
        str(config_file),
    ]


def worker_main(environ: dict[str, str] | None = None) -> int:
    """Entry point of every job pod: fetch inputs, train this node's share, node 0 uploads."""
    import yaml

    from components.common.model_download import fetch_model

    environ = dict(os.environ if environ is None else environ)
    payload = json.loads(environ[JOB_ENV])
    workdir = Path(environ.get("DISTILL_WORKDIR", "/tmp/distill-train"))
    fields = dict(payload["fields"])
    for name, uri in payload["inputs"].items():
        fields[name] = str(workdir / name)
        open_store(uri).download_dir("", workdir / name)
    for name, spec in payload.get("downloads", {}).items():
        folder = workdir / name.replace(".", "_")
        fetch_model(spec["source"], str(folder), spec["store_uri"])
        set_dotted(fields, name, str(folder))
    for name in payload["outputs"]:
        fields[name] = str(workdir / name)
    config_file = workdir / "train.yaml"
    config_file.write_text(yaml.safe_dump(fields, sort_keys=False))
    command = worker_command(payload, config_file, environ)
    log.info("node %d: %s", node_rank(environ), " ".join(command))
    returncode = subprocess.run(command, env=environ, check=False).returncode
    if returncode == 0 and node_rank(environ) == 0:
        for name, uri in payload["outputs"].items():
            if Path(fields[name]).exists():
                open_store(uri).upload_dir(Path(fields[name]), "")
    return returncode
