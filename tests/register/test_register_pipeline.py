"""The hand-off step in the compiled pipeline: after eval (which it runs only when eval passed), in the
eval image, registering and deploying only when asked to."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPILED = Path(__file__).resolve().parents[2] / "pipelines" / "distill_pipeline.yaml"


def test_register_step_takes_the_model_uri_eval_passed_and_runs_in_the_eval_image():
    pipeline = next(yaml.safe_load_all(COMPILED.read_text()))
    task = pipeline["root"]["dag"]["tasks"]["register-model"]
    assert task["inputs"]["parameters"]["model_uri"]["taskOutputParameter"] == {
        "outputParameterKey": "Output",
        "producerTask": "evaluate-student",
    }
    assert task["inputs"]["artifacts"]["results"]["taskOutputArtifact"]["producerTask"] == "evaluate-student"
    assert task["inputs"]["parameters"]["run_name"]["runtimeValue"]["constant"] == "{{$.pipeline_job_name}}"
    executors = pipeline["deploymentSpec"]["executors"]
    image = executors["exec-register-model"]["container"]["image"]
    assert image == executors["exec-evaluate-student"]["container"]["image"]
    assert "kfp-distill-eval:" in image
    parameters = pipeline["root"]["inputDefinitions"]["parameters"]
    assert parameters["register_registry_url"]["defaultValue"] == ""
    assert parameters["register_deploy"]["defaultValue"] is False
