"""The train stage's interface to the pipeline: its StageSpec, from which pipelines/ makes its KFP
component, and what its task does around the stage's `run`; the logic lives in components.train."""

from components.common.stage_spec import (
    RUN_ID,
    SERVED_TEACHER,
    STORE_URI,
    Artifact,
    Parameter,
    StageSpec,
    Task,
)
from components.train.config import SCORING_KINDS, Config


def run_task(task: Task) -> None:
    """Train in this pod, or (with more than one node, or an engine named) run a training job of
    train_nodes x train_job_gpus_per_node GPUs whose pods get the Secrets and ConfigMaps of `job_env`."""
    import functools

    from components.train.stage import run

    stage = run
    if task["teacher_server_address"]:
        from components.common.served_teacher import train_overrides

        overrides = task.values.get(task.spec.overrides) or {}
        task.values[task.spec.overrides] = train_overrides(
            task["teacher_server_address"], task["train_kd"] in SCORING_KINDS, overrides
        )
    if task["train_nodes"] > 1 or task["train_engine"] != "auto":
        from components.train.multinode.training import run_as_job

        stage = functools.partial(
            run_as_job,
            model_uri=task["student"].uri,
            data_uri=task["data"].uri,
            nodes=task["train_nodes"],
            gpus_per_node=task["train_job_gpus_per_node"],
            job_env=task["job_env"],
            kd_teacher_source=task["train_kd_teacher_source"],
            cpu=task["train_job_cpu"],
            memory=task["train_job_memory"],
            node_selector=task["train_node_selector"],
            tolerations=task["train_tolerations"],
        )
    result = task.run(stage)
    method = task["train_method"]
    task["trained"].metadata.update(
        {"format": "peft_adapter" if method != "full" else "hf_model", "method": method}
    )
    for name, value in result.metrics.items():
        task["metrics"].log_metric(name, value)


SPEC = StageSpec(
    stage="train",
    prefix="train",
    component="train_student",
    image="train",
    summary="Distill the teacher's records into the student: SFT (and KD when configured) with LoRA, QLoRA or full FT.",
    config=Config,
    run=run_task,
    consumes=(Artifact("student", "Model", "student_dir"), Artifact("data", "Dataset", "data_dir")),
    produces=(
        Artifact("trained", "Model", "output_dir"),
        Artifact("tensorboard", "Artifact", "tensorboard_dir"),
        Artifact("metrics", "Metrics"),
    ),
    wired=(
        RUN_ID,
        Parameter("job_env", dict, {}, "Secrets and ConfigMaps the training job's pods get as environment."),
        SERVED_TEACHER,
    ),
    parameters=(
        STORE_URI,
        Parameter(
            "train_kd_teacher_source",
            str,
            "",
            "local teacher for train_kd=logits, sharing the student's tokenizer (hf://, s3://, path).",
            field="kd.teacher_dir",
            fetch=True,
        ),
        Parameter(
            "train_nodes",
            int,
            1,
            "above 1, the train pod runs a training job (train_engine) of train_nodes x train_job_gpus_per_node GPUs.",
        ),
        Parameter("train_job_gpus_per_node", int, 8, "GPUs of each training job node when train_nodes > 1."),
        Parameter("train_job_cpu", str, "32", "CPU request of each training job node."),
        Parameter("train_job_memory", str, "256Gi", "memory request and limit of each training job node."),
        Parameter(
            "train_node_selector",
            dict,
            {},
            'node labels the train pod and the training job nodes must match, e.g. {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}.',
        ),
        Parameter(
            "train_tolerations",
            list,
            [],
            'tolerations of the train pod and the training job nodes, e.g. [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}].',
        ),
    ),
    placement=(
        Parameter(
            "train_gpus",
            int,
            1,
            "GPUs of the train pod (nvidia.com/gpu); 0 when train_nodes > 1, as the job's pods hold the GPUs.",
        ),
        Parameter("train_cpu", str, "8", "CPU request and limit of the train task."),
        Parameter("train_memory", str, "64Gi", "memory request and limit of the train task."),
    ),
    overrides_help='other train Config fields, nested as in its YAML, e.g. {"deepspeed": "zero2"}.',
)
