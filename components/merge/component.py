"""The merge stage's interface to the pipeline: its StageSpec, from which pipelines/ makes its KFP
component, and what its task does around the stage's `run`; the logic lives in components.merge."""

from components.common.stage_spec import Artifact, StageSpec, Task
from components.merge.config import Config


def run_task(task: Task) -> None:
    from components.merge.stage import run

    result = task.run(run)
    task["merged"].metadata.update({"format": "hf_model", "max_logit_diff": result.max_logit_diff})


SPEC = StageSpec(
    stage="merge",
    prefix="merge",
    component="merge_adapter",
    image="merge",
    summary=(
        "Merge the LoRA adapter into the base weights (or re-shard a full model) and verify the result;\n"
        "    `data` (the teacher dataset) names the teacher in the model card."
    ),
    config=Config,
    run=run_task,
    consumes=(
        Artifact("base", "Model", "student_dir"),
        Artifact("trained", "Model", "trained_dir"),
        Artifact("data", "Dataset", "data_dir"),
    ),
    produces=(Artifact("merged", "Model", "output_dir"),),
)
