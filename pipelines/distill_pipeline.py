"""The distillation pipeline: download → teacher data → train → merge → eval → register.

    make compile                                  # writes pipelines/distill_pipeline.yaml
    REGISTRY=registry.example.com/ml TAG=v1 python -m pipelines.distill_pipeline out.yaml

Parameters are prefixed by the stage they configure (`teacher_`, `train_`, `eval_`); every stage also
takes an `<stage>_overrides` mapping for any other field of its Config. A parameter that sets a Config
field is declared on that field (`exposed(...)` in components/<stage>/config.py), with its help text, which
becomes the parameter's description here; its default here must equal the field's
(tests/test_pipeline_parameters.py). Secrets never pass through
parameters: the tasks read them from environment variables filled from Kubernetes Secrets (which
task gets which: STAGE_SECRETS below, documented in the README).
"""

import inspect
import os
import sys
from typing import NamedTuple

from kfp import compiler, dsl, kubernetes
from kfp.dsl.pipeline_channel import PipelineParameterChannel

from components.common.config import exposed_fields
from components.common.secrets import JUDGE_KEY_ENV, TEACHER_KEY_ENV
from components.download.component import download_model
from components.evaluate.component import evaluate_student
from components.merge.component import merge_adapter
from components.register.component import register_model
from components.register.registry import TOKEN_ENV as REGISTRY_TOKEN_ENV
from components.teacher.approved_hosts import APPROVED_HOSTS_ENV
from components.teacher.component import teacher_data, teacher_shard_indices
from components.train.component import train_student
from components.train.multinode.kube import TRAIN_TOKEN_DIR
from pipelines.check_task import check_run
from pipelines.run_check import STAGE_CONFIGS

# The parameters that set no Config field: where the run keeps its files, how the tasks are placed and
# sized, and each stage's overrides. The others are described by their Config field's help.
PIPELINE_HELP = {
    "store_uri": "artifact store for caches, teacher shards, checkpoints and TensorBoard logs (s3://bucket/prefix).",
    "teacher_shards": "pods asking the teacher in parallel (dsl.ParallelFor); the provider's rate limits are split between them.",
    "teacher_overrides": 'other teacher Config fields, nested as in its YAML, e.g. {"max_cost": 20}.',
    "teacher_gpus": "GPUs of each teacher pod (nvidia.com/gpu): 1 or more for a local teacher (teacher_provider=local), 0 for an API.",
    "teacher_node_selector": "node labels the teacher pods must match (with teacher_gpus), as for train_node_selector.",
    "teacher_tolerations": "tolerations of the teacher pods (with teacher_gpus), as for train_tolerations.",
    "train_kd_teacher_source": "local teacher for train_kd=logits, sharing the student's tokenizer (hf://, s3://, path).",
    "train_gpus": "GPUs of the train pod (nvidia.com/gpu); 0 when train_nodes > 1, as the job's pods hold the GPUs.",
    "train_nodes": "above 1, the train pod runs a training job (train_engine) of train_nodes x train_job_gpus_per_node GPUs.",
    "train_job_gpus_per_node": "GPUs of each training job node when train_nodes > 1.",
    "train_job_cpu": "CPU request of each training job node.",
    "train_job_memory": "memory request and limit of each training job node.",
    "train_cpu": "CPU request and limit of the train task.",
    "train_memory": "memory request and limit of the train task.",
    "train_node_selector": 'node labels the train pod and the training job nodes must match, e.g. {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}.',
    "train_tolerations": 'tolerations of the train pod and the training job nodes, e.g. [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}].',
    "train_overrides": 'other train Config fields, nested as in its YAML, e.g. {"deepspeed": "zero2"}.',
    "eval_overrides": "other eval Config fields, nested as in its YAML.",
    "eval_gpus": "GPUs of the eval pod: 1 to score a 4/8-bit quantized student (eval quantization) or a large one.",
    "eval_node_selector": "node labels the eval pod must match (with eval_gpus).",
    "eval_tolerations": "tolerations of the eval pod (with eval_gpus).",
    "register_overrides": 'other register Config fields, nested as in its YAML, e.g. {"serving": {"max_model_len": 8192}}.',
}


def parameter_help() -> dict[str, str]:
    """Every pipeline parameter's description: PIPELINE_HELP, and the help of the Config fields."""
    described = dict(PIPELINE_HELP)
    for config in STAGE_CONFIGS.values():
        for exposed in exposed_fields(config):
            described.setdefault(exposed.parameter, exposed.help)
    return described


def describe_parameters(function):
    """Write `function`'s docstring from parameter_help(): KFP reads its Args into the parameters'
    descriptions, which its UI shows beside each parameter."""
    described = parameter_help()
    lines = [f"    {name}: {described[name]}" for name in inspect.signature(function).parameters]
    function.__doc__ = "Distill a teacher into a student.\n\nArgs:\n" + "\n".join(lines) + "\n"
    return function


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
# ConfigMap with the hosts an administrator approved for the API keys (components/teacher/approved_hosts.py),
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
}
# What the pods of a multi-node training job get: they read and write the store only (inputs, the KD
# teacher's cached copy, checkpoints, outputs), and never the teacher's key.
JOB_ENV = {
    "secrets": {S3_SECRET[0]: S3_SECRET[1]},
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
}
# Hours a task may run before Kubernetes stops it (kfp-kubernetes set_timeout).
TIMEOUT_HOURS = {"check": 1, "download": 2, "teacher": 48, "train": 72, "merge": 4, "eval": 12, "register": 1}


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


def prepare(
    task: dsl.PipelineTask, stage: str, name: str, retries: bool, pull_secrets: list[str]
) -> dsl.PipelineTask:
    """Name the task and give it its stage's resources, Secrets, image pull secrets and (with `retries`)
    retry policy."""
    task.set_display_name(name)
    pull_with(task, pull_secrets)
    if stage in RESOURCES:
        size(task, stage)
    use_secrets(task, stage)
    if retries and stage in RETRIES:
        count, backoff, factor = RETRIES[stage]
        task.set_retry(num_retries=count, backoff_duration=backoff, backoff_factor=factor)
    return task


def place_train(
    task, gpus, cpu, memory, node_selector, tolerations, labels: dict[str, str]
) -> dsl.PipelineTask:
    """The train pod's GPUs, CPU, memory and nodes, from pipeline parameters; its `labels` (Kueue's);
    shared memory for the data loader and NCCL; never cached, as a rerun must train again."""
    task.set_caching_options(False)
    for key, value in labels.items():
        kubernetes.add_pod_label(task, key, value)
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)
    task.set_cpu_request(cpu).set_cpu_limit(cpu)
    task.set_memory_request(memory).set_memory_limit(memory)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
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


def build_pipeline(
    retries: bool = True, pull_secrets: list[str] | None = None, train_labels: dict[str, str] | None = None
):
    """The pipeline; `retries=False` leaves out the task retry policies (for local runs); every task's
    pod pulls its image with `pull_secrets` (default: image_pull_secrets()); the one-pod train task
    carries `train_labels` (pipelines.submit gives it the run's Kueue queue and priority).

    kfp-kubernetes takes a pod label's value as a string only, never a run parameter, so the train
    pod's Kueue labels are fixed when the pipeline is compiled; a multi-node run's training job takes
    them from train_queue_name and train_priority_class at run time."""
    train_labels = train_labels or {}
    pull_secrets = image_pull_secrets() if pull_secrets is None else pull_secrets

    @dsl.pipeline(
        name="llm-distillation",
        description="Distill a teacher LLM (API or local) into a small student LLM: data, train, merge, eval.",
    )
    @describe_parameters
    def distill_pipeline(
        store_uri: str = "s3://distill",
        student_source: str = "hf://Qwen/Qwen2.5-0.5B-Instruct",
        student_trust_remote_code: bool = False,
        teacher_dataset: str = "s3://distill/datasets/prompts.jsonl",
        teacher_dataset_format: str = "auto",
        teacher_provider: str = "openai",
        teacher_model: str = "",
        teacher_base_url: str = "",
        teacher_api_key_env: str = TEACHER_KEY_ENV,
        teacher_concurrency: int = 16,
        teacher_mode: str = "sync",
        teacher_max_tokens: int = 1024,
        teacher_temperature: float = 0.0,
        teacher_test_ratio: float = 0.1,
        teacher_system_prompt: str = "",
        teacher_shards: int = 1,
        teacher_gpus: int = 0,
        teacher_node_selector: dict = {},
        teacher_tolerations: list = [],
        teacher_overrides: dict = {},
        train_method: str = "lora",
        train_lora_r: int = 16,
        train_lora_alpha: int = 32,
        train_learning_rate: float = 2e-4,
        train_max_steps: int = -1,
        train_batch_size: int = 8,
        train_kd: str = "none",
        train_kd_teacher_source: str = "",
        train_gpus: int = 1,
        train_nodes: int = 1,
        train_job_gpus_per_node: int = 8,
        train_job_cpu: str = "32",
        train_job_memory: str = "256Gi",
        train_engine: str = "auto",
        train_runtime: str = "distill-torch",
        train_queue_name: str = "",
        train_priority_class: str = "",
        train_cpu: str = "8",
        train_memory: str = "64Gi",
        train_node_selector: dict = {},
        train_tolerations: list = [],
        train_overrides: dict = {},
        merge_max_shard_size: str = "2GB",
        merge_dtype: str = "auto",
        eval_max_new_tokens: int = 256,
        eval_batch_size: int = 16,
        eval_max_samples: int = 200,
        eval_gate_metric: str = "distilled_rouge_l",
        eval_min_score: float = 0.0,
        eval_gpus: int = 0,
        eval_node_selector: dict = {},
        eval_tolerations: list = [],
        eval_benchmark_tasks: list = [],
        eval_benchmark_limit: int = 100,
        eval_max_regression: dict = {},
        eval_overrides: dict = {},
        register_registry_url: str = "",
        register_model_name: str = "distilled-student",
        register_deploy: bool = False,
        register_namespace: str = "",
        register_gpus: int = 1,
        register_overrides: dict = {},
        seed: int = 0,
    ) -> Outputs:
        # Every parameter above, as the run was started with (`retries` is the builder's, not the run's).
        parameters = {
            name: value for name, value in locals().items() if isinstance(value, PipelineParameterChannel)
        }
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER

        check = check_run(**parameters)
        prepare(check, "check", "check run", retries, pull_secrets)

        student = download_model(
            source=student_source, store_uri=store_uri, trust_remote_code=student_trust_remote_code
        ).after(check)
        prepare(student, "download", "download student", retries, pull_secrets)

        teacher_inputs = dict(
            dataset=teacher_dataset,
            dataset_format=teacher_dataset_format,
            store_uri=store_uri,
            run_id=run_id,
            provider=teacher_provider,
            model=teacher_model,
            base_url=teacher_base_url,
            api_key_env=teacher_api_key_env,
            concurrency=teacher_concurrency,
            mode=teacher_mode,
            max_tokens=teacher_max_tokens,
            temperature=teacher_temperature,
            test_ratio=teacher_test_ratio,
            system_prompt=teacher_system_prompt,
            seed=seed,
            overrides=teacher_overrides,
        )
        shards = teacher_shard_indices(num_shards=teacher_shards).after(check)
        shards.set_display_name("plan teacher shards")
        pull_with(size(shards, "teacher"), pull_secrets)
        with dsl.ParallelFor(shards.output, name="teacher-shards") as shard_index:
            shard = teacher_data(
                shard_index=shard_index, num_shards=teacher_shards, gpus=teacher_gpus, **teacher_inputs
            )
            prepare(shard, "teacher", "teacher shard", retries, pull_secrets)
            place_on_gpus(shard, teacher_gpus, teacher_node_selector, teacher_tolerations)

        # Merges what the shards stored (asking only for what they left), filters and splits.
        teacher = teacher_data(gpus=teacher_gpus, **teacher_inputs).after(shard)
        prepare(teacher, "teacher", "teacher data", retries, pull_secrets)
        place_on_gpus(teacher, teacher_gpus, teacher_node_selector, teacher_tolerations)

        train = train_student(
            student=student.outputs["model"],
            data=teacher.outputs["data"],
            store_uri=store_uri,
            run_id=run_id,
            method=train_method,
            lora_r=train_lora_r,
            lora_alpha=train_lora_alpha,
            learning_rate=train_learning_rate,
            max_steps=train_max_steps,
            batch_size=train_batch_size,
            seed=seed,
            kd=train_kd,
            kd_teacher_source=train_kd_teacher_source,
            overrides=train_overrides,
            nodes=train_nodes,
            gpus_per_node=train_job_gpus_per_node,
            engine=train_engine,
            runtime=train_runtime,
            queue_name=train_queue_name,
            priority_class=train_priority_class,
            job_cpu=train_job_cpu,
            job_memory=train_job_memory,
            node_selector=train_node_selector,
            tolerations=train_tolerations,
            job_env=JOB_ENV,
        )
        place_train(
            train, train_gpus, train_cpu, train_memory, train_node_selector, train_tolerations, train_labels
        )
        prepare(train, "train", "train student", retries, pull_secrets)

        merge = merge_adapter(
            base=student.outputs["model"],
            trained=train.outputs["trained"],
            data=teacher.outputs["data"],
            max_shard_size=merge_max_shard_size,
            dtype=merge_dtype,
        )
        prepare(merge, "merge", "merge adapter", retries, pull_secrets)

        evaluate = evaluate_student(
            untrained=student.outputs["model"],
            distilled=merge.outputs["merged"],
            data=teacher.outputs["data"],
            tensorboard=train.outputs["tensorboard"],
            max_new_tokens=eval_max_new_tokens,
            batch_size=eval_batch_size,
            max_samples=eval_max_samples,
            gate_metric=eval_gate_metric,
            min_score=eval_min_score,
            benchmark_tasks=eval_benchmark_tasks,
            benchmark_limit=eval_benchmark_limit,
            max_regression=eval_max_regression,
            overrides=eval_overrides,
        )
        prepare(evaluate, "eval", "evaluate student", retries, pull_secrets)
        place_on_gpus(evaluate, eval_gpus, eval_node_selector, eval_tolerations)

        # Runs only when eval passed its gates; registers and deploys only when asked to.
        handoff = register_model(
            model_uri=evaluate.outputs["Output"],
            results=evaluate.outputs["results"],
            run_id=run_id,
            run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            registry_url=register_registry_url,
            model_name=register_model_name,
            deploy=register_deploy,
            namespace=register_namespace,
            gpus=register_gpus,
            overrides=register_overrides,
        )
        prepare(handoff, "register", "hand over model", retries, pull_secrets)
        return Outputs(
            model=merge.outputs["merged"],
            tensorboard=train.outputs["tensorboard"],
            metrics=evaluate.outputs["metrics"],
            report=evaluate.outputs["report"],
            results=evaluate.outputs["results"],
        )

    return distill_pipeline


distill_pipeline = build_pipeline()


def compile_pipeline(
    path: str = "pipelines/distill_pipeline.yaml", train_labels: dict[str, str] | None = None
) -> str:
    pipeline = build_pipeline(train_labels=train_labels) if train_labels else distill_pipeline
    compiler.Compiler().compile(pipeline, package_path=path)
    return path


if __name__ == "__main__":
    print(compile_pipeline(*sys.argv[1:2]))
