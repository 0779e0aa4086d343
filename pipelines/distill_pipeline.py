"""The distillation pipeline: download → teacher data → train → merge → eval → register.

    make compile                                  # writes pipelines/distill_pipeline.yaml
    REGISTRY=registry.example.com/ml TAG=v1 python -m pipelines.distill_pipeline out.yaml

Its parameters, their defaults and descriptions come from the stages' specs (components/<stage>/
component.py, components/common/stage_spec.py): a Config field declared `exposed(...)` is a parameter
prefixed by its stage (`teacher_`, `train_`, `eval_`), and every stage also takes an `<stage>_overrides`
mapping for any other field of its Config. Secrets never pass through parameters: the tasks read them
from environment variables filled from Kubernetes Secrets (which task gets which: STAGE_SECRETS below,
documented in the README).
"""

import inspect
import os
import sys
from dataclasses import dataclass
from typing import Any, NamedTuple

from kfp import compiler, dsl, kubernetes

from components.common.approved_hosts import APPROVED_HOSTS_ENV
from components.common.images import image_for
from components.common.secrets import JUDGE_KEY_ENV, TEACHER_KEY_ENV
from components.common.stage_spec import StageSpec, component
from components.register.registry import TOKEN_ENV as REGISTRY_TOKEN_ENV
from components.teacher_server.component import REMOVE as REMOVE_TEACHER_SERVER
from components.train.multinode.kube import TRAIN_TOKEN_DIR
from pipelines.check_task import check_run
from pipelines.run_check import (
    DOWNLOAD,
    EVAL,
    MERGE,
    REGISTER,
    TEACHER,
    TEACHER_SERVER,
    TRAIN,
    pipeline_parameters,
)

# Made here rather than beside their specs: a task's body imports its stage's spec, and in the task's
# process (KFP's runtime) kfp.dsl has no `component` to make one with.
download_model = component(DOWNLOAD)
teacher_data = component(TEACHER)
train_student = component(TRAIN)
merge_adapter = component(MERGE)
evaluate_student = component(EVAL)
register_model = component(REGISTER)
start_teacher_server = component(TEACHER_SERVER)
remove_teacher_server = component(REMOVE_TEACHER_SERVER)


@dsl.component(base_image=image_for("teacher"), install_kfp_package=False)
def teacher_shard_indices(teacher_shards: int) -> list:
    """The shard indices 0 … teacher_shards-1, for dsl.ParallelFor."""
    return list(range(teacher_shards))


@dsl.component(base_image=image_for("register"), install_kfp_package=False)
def no_teacher_server() -> str:
    """The address of the run's served teacher when it has none (dsl.OneOf's other branch)."""
    return ""


# Kubernetes Secret name -> ({key in the Secret: environment variable in the pod}, optional).
# Optional Secrets may be absent: public models need no HF token, most runs no judge.
TEACHER_SECRET = ("distill-teacher", {"api-key": TEACHER_KEY_ENV}, False)
S3_SECRET = (
    "distill-s3",
    {"access-key-id": "AWS_ACCESS_KEY_ID", "secret-access-key": "AWS_SECRET_ACCESS_KEY"},
    False,
)
HF_SECRET = ("distill-hf", {"token": "HF_TOKEN"}, True)
# The keys of the experiment trackers train.report_to names (Swanlab, Weights & Biases); most runs use none.
TRACKERS_SECRET = (
    "distill-trackers",
    {"swanlab-api-key": "SWANLAB_API_KEY", "wandb-api-key": "WANDB_API_KEY"},
    True,
)
JUDGE_SECRET = ("distill-judge", {"api-key": JUDGE_KEY_ENV}, True)
# Absent: the register step authenticates to Model Registry with its pod's service-account token.
REGISTRY_SECRET = ("distill-registry", {"token": REGISTRY_TOKEN_ENV}, True)
# ConfigMap with the S3 endpoint (MinIO, SeaweedFS); absent or empty values fall back to AWS.
S3_CONFIGMAP = ("distill-s3-endpoint", {"endpoint-url": "AWS_ENDPOINT_URL", "region": "AWS_DEFAULT_REGION"})
# ConfigMap with the hosts an administrator approved for the API keys (components/common/approved_hosts.py),
# for the tasks that hold a key.
APPROVED_HOSTS_CONFIGMAP = ("distill-approved-hosts", {"api-hosts": APPROVED_HOSTS_ENV})
# Each task gets the Secrets its stage reads and no other, so a task that is compromised (a poisoned
# checkpoint, a hostile template) cannot spend the teacher's key or write to the store it does not use.
# KFP artifacts (inputs and outputs) are moved by the KFP launcher with its own credentials (the
# kfp-launcher ConfigMap), so a stage needs S3_SECRET only to reach `store_uri` itself.
STAGE_SECRETS = {
    "check": (),  # reads nothing: the parameters only
    "download": (S3_SECRET, HF_SECRET),  # the download cache in the store; gated hub models
    "teacher": (S3_SECRET, TEACHER_SECRET, JUDGE_SECRET),  # answer shards and cache; the API; the judge
    # checkpoints and live logs; the hub download of a kd teacher; the trackers of report_to
    "train": (S3_SECRET, HF_SECRET, TRACKERS_SECRET),
    "merge": (),  # folds the adapter from its input artifacts into its output artifact
    "eval": (JUDGE_SECRET,),  # the optional LLM judge, which reads JUDGE_API_KEY, never the teacher's key
    "register": (REGISTRY_SECRET,),  # Model Registry; KServe through the pod's service account (RBAC)
    "teacher_server": (),  # KServe through the pod's service account (RBAC)
}
# What the pods of a multi-node training job get: the store (inputs, the KD teacher's cached copy,
# checkpoints, outputs) and the trackers of report_to (node 0 reports), never the teacher's key.
JOB_SECRETS = (S3_SECRET, TRACKERS_SECRET)
JOB_ENV = {
    "secrets": {name: keys for name, keys, _ in JOB_SECRETS},
    "optional_secrets": [name for name, _, optional in JOB_SECRETS if optional],
    "config_maps": {S3_CONFIGMAP[0]: S3_CONFIGMAP[1]},
}


# The token of the account that may run training jobs (manifests/base/rbac.yaml), for the train task only.
TRAIN_LAUNCHER_TOKEN = "distill-train-launcher-token"


def image_pull_secrets() -> list[str]:
    """Secrets for pulling the images from a private registry, named at compile time beside REGISTRY and
    TAG (IMAGE_PULL_SECRETS=regcred,other): kfp-kubernetes takes each name as a string, not a list
    parameter, and the registry they unlock is chosen at compile time too."""
    return [name.strip() for name in os.environ.get("IMAGE_PULL_SECRETS", "").split(",") if name.strip()]


class Outputs(NamedTuple):
    """What a run leaves for the user: the servable model and the evaluation."""

    model: dsl.Model
    tensorboard: dsl.Artifact
    metrics: dsl.Metrics
    report: dsl.HTML
    results: dsl.Artifact


# CPU/memory (request, limit) of the stages that need no GPU; train takes pipeline parameters instead.
RESOURCES = {
    "check": ("100m", "1", "256Mi", "1Gi"),
    "download": ("1", "2", "4Gi", "16Gi"),
    "teacher": ("1", "2", "2Gi", "8Gi"),
    "merge": ("2", "8", "16Gi", "64Gi"),
    "eval": ("4", "8", "16Gi", "64Gi"),
    "register": ("0.5", "1", "1Gi", "2Gi"),
    "teacher_server": ("100m", "1", "256Mi", "1Gi"),
}
# Hours a task may run before Kubernetes stops it (kfp-kubernetes set_timeout).
TIMEOUT_HOURS = {
    "check": 1,
    "download": 2,
    "teacher": 48,
    "train": 72,
    "merge": 4,
    "eval": 12,
    "register": 1,
    "teacher_server": 1,
}


def size(task: dsl.PipelineTask, stage: str) -> dsl.PipelineTask:
    cpu_request, cpu_limit, memory_request, memory_limit = RESOURCES[stage]
    task.set_cpu_request(cpu_request).set_cpu_limit(cpu_limit)
    task.set_memory_request(memory_request).set_memory_limit(memory_limit)
    return kubernetes.set_timeout(task, TIMEOUT_HOURS[stage] * 3600)


# Task retries (count, first backoff, factor): on the cluster they ride out lost nodes and API outages,
# and the teacher and train stages resume where the failed attempt stopped. The local runner builds the
# pipeline without them, so bad input fails at once instead of after minutes of back-off (kfp.local
# honours retry policies).
RETRIES = {"teacher": (3, "60s", 2.0), "train": (2, "120s", 2.0)}


def use_secrets(task: dsl.PipelineTask, stage: str) -> dsl.PipelineTask:
    """Fill the task's environment from the Secrets of STAGE_SECRETS[stage], by reference; a task that
    reaches the store also gets its endpoint ConfigMap, and a task holding an API key the hosts approved for
    it."""
    for name, keys, optional in STAGE_SECRETS[stage]:
        kubernetes.use_secret_as_env(task, secret_name=name, secret_key_to_env=keys, optional=optional)
    config_maps = []
    if S3_SECRET in STAGE_SECRETS[stage]:
        config_maps.append(S3_CONFIGMAP)
    if TEACHER_SECRET in STAGE_SECRETS[stage] or JUDGE_SECRET in STAGE_SECRETS[stage]:
        config_maps.append(APPROVED_HOSTS_CONFIGMAP)
    for name, keys in config_maps:
        kubernetes.use_config_map_as_env(
            task, config_map_name=name, config_map_key_to_env=keys, optional=True
        )
    return task


def pull_with(task: dsl.PipelineTask, secrets: list[str]) -> dsl.PipelineTask:
    return kubernetes.set_image_pull_secrets(task, secrets) if secrets else task


def place_train(task: dsl.PipelineTask, p: dict[str, Any], labels: dict[str, str]) -> dsl.PipelineTask:
    """The train pod's GPUs, CPU, memory and nodes, from pipeline parameters; its `labels` (Kueue's);
    shared memory for the data loader and NCCL; never cached, as a rerun must train again."""
    task.set_caching_options(False)
    for key, value in labels.items():
        kubernetes.add_pod_label(task, key, value)
    place_on_gpus(task, p["train_gpus"], p["train_node_selector"], p["train_tolerations"])
    task.set_cpu_request(p["train_cpu"]).set_cpu_limit(p["train_cpu"])
    task.set_memory_request(p["train_memory"]).set_memory_limit(p["train_memory"])
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
    # Optional: a one-pod run needs no job, and a cluster without the Role has none to mount.
    kubernetes.use_secret_as_volume(
        task, secret_name=TRAIN_LAUNCHER_TOKEN, mount_path=str(TRAIN_TOKEN_DIR), optional=True
    )
    return kubernetes.set_timeout(task, TIMEOUT_HOURS["train"] * 3600)


def place_on_gpus(task, gpus, node_selector, tolerations) -> dsl.PipelineTask:
    """A GPU task's accelerators and nodes from pipeline parameters (0 GPUs: a CPU pod, no request)."""
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    return task


def place_stage(task: dsl.PipelineTask, spec: StageSpec, p: dict[str, Any]) -> dsl.PipelineTask:
    """A GPU stage's pod: its `<prefix>_gpus`, `<prefix>_node_selector` and `<prefix>_tolerations`."""
    prefix = spec.prefix
    return place_on_gpus(task, p[f"{prefix}_gpus"], p[f"{prefix}_node_selector"], p[f"{prefix}_tolerations"])


def arguments(spec: StageSpec, p: dict[str, Any]) -> dict[str, Any]:
    """The stage's task inputs that pipeline parameters feed, each wired to the parameter of its name."""
    return {parameter.name: p[parameter.name] for parameter in spec.task_parameters()}


@dataclass(frozen=True)
class TaskSettings:
    """What the tasks get besides their inputs: (with `retries`) their retry policies, the secrets their
    pods pull their images with, and the one-pod train task's labels."""

    retries: bool
    pull_secrets: list[str]
    train_labels: dict[str, str]

    def prepare(self, task: dsl.PipelineTask, stage: str, name: str) -> dsl.PipelineTask:
        """Name the task and give it its stage's resources, Secrets, image pull secrets and retry policy."""
        task.set_display_name(name)
        pull_with(task, self.pull_secrets)
        if stage in RESOURCES:
            size(task, stage)
        use_secrets(task, stage)
        if self.retries and stage in RETRIES:
            count, backoff, factor = RETRIES[stage]
            task.set_retry(num_retries=count, backoff_duration=backoff, backoff_factor=factor)
        return task


def teacher_fan_out(
    p: dict[str, Any], check: dsl.PipelineTask, served: Any, settings: TaskSettings
) -> dsl.PipelineTask:
    """The teacher's sub-graph: the shard list, a ParallelFor of shard tasks, then the task that merges
    what the shards stored (asking only for what they left), filters and splits; returns that task."""
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    shards = teacher_shard_indices(teacher_shards=p["teacher_shards"]).after(check)
    shards.set_display_name("plan teacher shards")
    pull_with(size(shards, "teacher"), settings.pull_secrets)
    with dsl.ParallelFor(shards.output, name="teacher-shards") as shard_index:
        shard = teacher_data(
            shard_index=shard_index, run_id=run_id, teacher_server_address=served, **arguments(TEACHER, p)
        )
        place_stage(settings.prepare(shard, "teacher", "teacher shard"), TEACHER, p)
    teacher = teacher_data(run_id=run_id, teacher_server_address=served, **arguments(TEACHER, p)).after(shard)
    return place_stage(settings.prepare(teacher, "teacher", "teacher data"), TEACHER, p)


def model_tasks(
    p: dict[str, Any],
    student: dsl.PipelineTask,
    teacher: dsl.PipelineTask,
    served: Any,
    settings: TaskSettings,
) -> tuple[Outputs, dsl.PipelineTask]:
    """The model's sub-graph: train the student on the teacher's data, merge, evaluate, and (only when
    eval passed its gates) hand it over."""
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    model, data = student.outputs["model"], teacher.outputs["data"]
    train = train_student(
        student=model,
        data=data,
        run_id=run_id,
        job_env=JOB_ENV,
        teacher_server_address=served,
        **arguments(TRAIN, p),
    )
    settings.prepare(place_train(train, p, settings.train_labels), "train", "train student")

    merge = merge_adapter(base=model, trained=train.outputs["trained"], data=data, **arguments(MERGE, p))
    settings.prepare(merge, "merge", "merge adapter")

    evaluate = evaluate_student(
        untrained=model,
        distilled=merge.outputs["merged"],
        data=data,
        tensorboard=train.outputs["tensorboard"],
        **arguments(EVAL, p),
    )
    place_stage(settings.prepare(evaluate, "eval", "evaluate student"), EVAL, p)

    # Runs only when eval passed its gates (the task fails otherwise); registers and deploys only when asked.
    handoff = register_model(
        model_uri=evaluate.outputs["Output"],
        results=evaluate.outputs["results"],
        run_id=run_id,
        run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        **arguments(REGISTER, p),
    )
    settings.prepare(handoff, "register", "hand over model")
    outputs = Outputs(
        model=merge.outputs["merged"],
        tensorboard=train.outputs["tensorboard"],
        metrics=evaluate.outputs["metrics"],
        report=evaluate.outputs["report"],
        results=evaluate.outputs["results"],
    )
    return outputs, train


def add_tasks(p: dict[str, Any], settings: TaskSettings) -> Outputs:
    """The pipeline's tasks, on the parameter channels `p`: the run check first, then the stages."""
    check = settings.prepare(check_run(**p), "check", "check run")
    student = download_model(**arguments(DOWNLOAD, p)).after(check)
    settings.prepare(student, "download", "download student")
    served = teacher_server(p, check, settings)
    teacher = teacher_fan_out(p, check, served, settings)
    outputs, train = model_tasks(p, student, teacher, served, settings)
    remove_teacher_server_after(p, [teacher, train], settings)
    return outputs


def teacher_server(p: dict[str, Any], check: dsl.PipelineTask, settings: TaskSettings) -> dsl.OneOf:
    """The served teacher's address: with teacher_server_source, a task starts it and waits until Ready;
    otherwise empty."""
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    with dsl.If(p[TEACHER_SERVER.switch] != "", name="teacher-server"):
        start = start_teacher_server(run_id=run_id, **arguments(TEACHER_SERVER, p)).after(check)
        settings.prepare(start, "teacher_server", "start teacher server").set_caching_options(False)
    with dsl.Else(name="no-teacher-server"):
        none = no_teacher_server().after(check)
        pull_with(size(none, "check"), settings.pull_secrets).set_display_name("no teacher server")
    return dsl.OneOf(start.output, none.output)


def remove_teacher_server_after(
    p: dict[str, Any], users: list[dsl.PipelineTask], settings: TaskSettings
) -> dsl.PipelineTask:
    """Delete the served teacher once the tasks that ask it have ended, failed or not. Not a
    dsl.ExitHandler: KFP refuses pipeline outputs made inside one, and the run's outputs are made by the
    tasks it would wrap; ignore_upstream_failure makes the task an exit task of `users` instead. With no
    teacher_server_source it deletes nothing."""
    remove = remove_teacher_server(
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, **arguments(REMOVE_TEACHER_SERVER, p)
    )
    remove.after(*users).ignore_upstream_failure().set_caching_options(False)
    return settings.prepare(remove, "teacher_server", "remove teacher server")


def build_pipeline(
    retries: bool = True, pull_secrets: list[str] | None = None, train_labels: dict[str, str] | None = None
):
    """The pipeline; `retries=False` leaves out the task retry policies (for local runs); every task's
    pod pulls its image with `pull_secrets` (default: image_pull_secrets()); the one-pod train task
    carries `train_labels` (pipelines.submit gives it the run's Kueue queue and priority). Its signature
    and docstring (which KFP reads into the parameters' defaults and descriptions) are made from the
    stages' specs.

    kfp-kubernetes takes a pod label's value as a string only, never a run parameter, so the train
    pod's Kueue labels are fixed when the pipeline is compiled; a multi-node run's training job takes
    them from train_queue_name and train_priority_class at run time."""
    pull_secrets = image_pull_secrets() if pull_secrets is None else pull_secrets
    settings = TaskSettings(retries, pull_secrets, train_labels or {})
    parameters = pipeline_parameters()
    names = [parameter.name for parameter in parameters]

    def distill_pipeline(*values) -> Outputs:
        return add_tasks(
            dict(zip(names, values, strict=True)), settings
        )  # KFP passes the channels by position

    distill_pipeline.__signature__ = inspect.Signature(
        [
            inspect.Parameter(
                p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=p.default, annotation=p.type
            )
            for p in parameters
        ],
        return_annotation=Outputs,
    )
    described = "\n".join(f"    {p.name}: {p.help}" for p in parameters)
    distill_pipeline.__doc__ = f"Distill a teacher into a student.\n\nArgs:\n{described}\n"
    return dsl.pipeline(
        name="llm-distillation",
        description="Distill a teacher LLM (API or local) into a small student LLM: data, train, merge, eval.",
    )(distill_pipeline)


distill_pipeline = build_pipeline()


def compile_pipeline(
    path: str = "pipelines/distill_pipeline.yaml", train_labels: dict[str, str] | None = None
) -> str:
    pipeline = build_pipeline(train_labels=train_labels) if train_labels else distill_pipeline
    compiler.Compiler().compile(pipeline, package_path=path)
    return path


if __name__ == "__main__":
    print(compile_pipeline(*sys.argv[1:2]))
