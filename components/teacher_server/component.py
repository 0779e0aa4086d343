"""The teacher server's interface to the pipeline: two StageSpecs sharing its Config, one starting the
server before the teacher stage, one deleting it when the run ends; the logic lives in
components.teacher_server.stage. Both run in the register image (the Kubernetes client), as the
account the distill-model-deployer Role lets create and delete InferenceServices."""

import dataclasses

from components.common.stage_spec import RUN_ID, Parameter, StageSpec, Task
from components.teacher_server.config import Config

SOURCE = Parameter(
    "teacher_server_source",
    str,
    "",
    "teacher model KServe serves for this run (hf://org/name[@revision] or s3://bucket/prefix), asked "
    "by the teacher stage (provider vllm) and KD scoring (kd.teacher_url); empty: none.",
    field="source",
)
GPUS = Parameter(
    "teacher_server_gpus", int, 1, "GPUs of the served teacher (teacher_server_source).", field="serving.gpus"
)


def start_task(task: Task) -> str:
    """The served teacher's in-cluster address, once it is Ready."""
    from components.teacher_server.stage import run

    return task.run(run).address


def remove_task(task: Task) -> None:
    from components.common.inference_service import custom_objects_api
    from components.teacher_server.stage import remove

    if task.spec.runs(task.values):
        task.run(lambda config: remove(config, custom_objects_api()))


SPEC = StageSpec(
    stage="teacher_server",
    prefix="teacher_server",
    component="start_teacher_server",
    image="register",
    summary="Serve teacher_server_source as a KServe InferenceService for this run; return its address once Ready.",
    config=Config,
    run=start_task,
    wired=(RUN_ID,),
    parameters=(SOURCE, GPUS),
    returns=str,
    exposes=False,  # its serving settings are the register stage's parameters
    switch=SOURCE.name,
)
REMOVE = dataclasses.replace(
    SPEC,
    component="remove_teacher_server",
    summary="Delete this run's served teacher (none: nothing to do); runs when the run ends, failed or not.",
    run=remove_task,
    returns=None,
    attribute="REMOVE",
)
