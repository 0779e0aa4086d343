"""The eval stage's interface to the pipeline: its StageSpec, from which pipelines/ makes its KFP
component, and what its task does around the stage's `run`; the logic lives in components.evaluate."""

from components.common.stage_spec import Artifact, Parameter, StageSpec, Task
from components.evaluate.config import Config


def run_task(task: Task) -> str:
    import shutil

    from components.evaluate.stage import run

    result = task.run(run)
    shutil.copyfile(f"{task['results'].path}/report.html", task["report"].path)
    for name, value in result.metrics.items():
        task["metrics"].log_metric(name, value)
    return task["distilled"].uri


SPEC = StageSpec(
    stage="evaluate",
    prefix="eval",
    component="evaluate_student",
    image="eval",
    summary=(
        "Compare the untrained and the distilled student with the teacher on the held-out split; returns the\n"
        "    distilled model's URI, for the hand-off of a model that passed the gates."
    ),
    config=Config,
    run=run_task,
    consumes=(
        Artifact("untrained", "Model", "student_dir"),
        Artifact("distilled", "Model", "trained_dir"),
        Artifact("data", "Dataset", "data_dir"),
        Artifact("tensorboard", "Artifact", "tensorboard_dir"),
    ),
    produces=(
        Artifact("metrics", "Metrics"),
        Artifact("report", "HTML"),
        Artifact("results", "Artifact", "output_dir"),
    ),
    placement=(
        Parameter(
            "eval_gpus",
            int,
            0,
            "GPUs of the eval pod: 1 to score a 4/8-bit quantized student (eval quantization) or a large one.",
        ),
        Parameter("eval_node_selector", dict, {}, "node labels the eval pod must match (with eval_gpus)."),
        Parameter("eval_tolerations", list, [], "tolerations of the eval pod (with eval_gpus)."),
    ),
    overrides_help="other eval Config fields, nested as in its YAML.",
    returns=str,
)
