"""The download stage's interface to the pipeline: its StageSpec, from which pipelines/ makes its KFP
component, and what its task does around the stage's `run`; the logic lives in components.download."""

from components.common.stage_spec import STORE_URI, Artifact, StageSpec, Task
from components.download.config import Config


def run_task(task: Task) -> None:
    from components.download.stage import run

    result = task.run(run)
    model = task["model"]
    model.metadata.update({"source": result.source, "cached": result.cached, "format": "hf_model"})
    if "revision" in result.metadata:  # the commit a hub download was pinned to
        model.metadata["revision"] = result.metadata["revision"]


SPEC = StageSpec(
    stage="download",
    prefix="download",
    component="download_model",
    image="download",
    summary="Fetch a model into the `model` artifact, reusing the store's cached copy of the same source.",
    config=Config,
    run=run_task,
    produces=(Artifact("model", "Model", "output_dir"),),
    parameters=(STORE_URI,),
)
