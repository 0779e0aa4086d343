"""The register stage's interface to the pipeline: its StageSpec, from which pipelines/ makes its KFP
component, and what its task does around the stage's `run`; the logic lives in components.register.
It runs in the eval image."""

from components.common.stage_spec import RUN_ID, Artifact, Parameter, StageSpec, Task
from components.register.config import Config


def run_task(task: Task) -> None:
    from components.register.stage import run

    result = task.run(run)
    task["inference_service"].metadata["registered"] = result.registration is not None
    task["inference_service"].metadata["deployed"] = result.deployed or ""


SPEC = StageSpec(
    stage="register",
    prefix="register",
    component="register_model",
    image="register",
    summary=(
        "Hand the gated model over: its KServe InferenceService (always written), Model Registry (with\n"
        "    register_registry_url) and the cluster (with register_deploy)."
    ),
    config=Config,
    run=run_task,
    consumes=(Artifact("results", "Artifact", "eval_dir"),),
    produces=(Artifact("inference_service", "Artifact", "output_dir"),),
    wired=(
        Parameter("model_uri", str, help="the store URI of the model eval passed.", field="model_uri"),
        RUN_ID,
        Parameter("run_name", str, help="the run's name, the registered version's.", field="run_name"),
    ),
    overrides_help='other register Config fields, nested as in its YAML, e.g. {"serving": {"max_model_len": 8192}}.',
)
