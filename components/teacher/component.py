"""The teacher-data stage's interface to the pipeline: its StageSpec, from which pipelines/ makes its KFP
component, and what its task does around the stage's `run`; the logic lives in components.teacher."""

from components.common.stage_spec import (
    RUN_ID,
    SERVED_TEACHER,
    STORE_URI,
    Artifact,
    Parameter,
    StageSpec,
    Task,
)
from components.teacher.config import Config


def run_task(task: Task) -> None:
    import functools

    from components.teacher.stage import run, run_shard

    stage = run
    if task["teacher_server_address"]:
        from components.common.served_teacher import teacher_inputs

        task.values.update(teacher_inputs(task["teacher_server_address"], task["run_id"]))
    if task["shard_index"] >= 0:
        stage = functools.partial(
            run_shard, shard_index=task["shard_index"], num_shards=task["teacher_shards"]
        )
    result = task.run(stage)
    for name, value in {**result.metrics, "gpus": float(task["teacher_gpus"])}.items():
        task["metrics"].log_metric(name, value)


SPEC = StageSpec(
    stage="teacher",
    prefix="teacher",
    component="teacher_data",
    image="teacher",
    summary=(
        "Ask the teacher for an answer to every prompt of the dataset; write train/test distillation\n"
        "    records (`data`); with a shard index, ask only for that shard's prompts (`data` stays empty)."
    ),
    config=Config,
    run=run_task,
    produces=(Artifact("data", "Dataset", "output_dir"), Artifact("metrics", "Metrics")),
    wired=(
        RUN_ID,
        Parameter(
            "shard_index",
            int,
            -1,
            "ask only for this shard's prompts; -1 asks for whatever no shard stored yet, then merges, "
            "filters and splits everything.",
        ),
        SERVED_TEACHER,
    ),
    parameters=(
        STORE_URI,
        Parameter(
            "teacher_shards",
            int,
            1,
            "pods asking the teacher in parallel (dsl.ParallelFor); the provider's rate limits are split between them.",
        ),
        # An input of the task (reported in its metrics) rather than only a resource request: KFP passes
        # into the shards' ParallelFor only values a task there takes as inputs.
        Parameter(
            "teacher_gpus",
            int,
            0,
            "GPUs of each teacher pod (nvidia.com/gpu): 1 or more for a local teacher (teacher_provider=local), 0 for an API.",
        ),
    ),
    placement=(
        Parameter(
            "teacher_node_selector",
            dict,
            {},
            "node labels the teacher pods must match (with teacher_gpus), as for train_node_selector.",
        ),
        Parameter(
            "teacher_tolerations",
            list,
            [],
            "tolerations of the teacher pods (with teacher_gpus), as for train_tolerations.",
        ),
    ),
    overrides_help='other teacher Config fields, nested as in its YAML, e.g. {"max_cost": 20}.',
)
