"""Register stage: the hand-off of a model that passed the eval gates.

    python -m components.register --config register.yaml

Order of work:
    1. read the eval stage's eval.json; a model that failed a gate is refused (the pipeline runs this step
       only after eval passed; this holds for a run by hand too)
    2. write the KServe InferenceService for the model's store URI to output_dir/inferenceservice.yaml
    3. with registry_url: register the model in Kubeflow Model Registry, the eval metrics, the gates'
       verdicts and the pipeline run id as the version's properties (registration.json)
    4. with deploy: create the InferenceService through the Kubernetes API, or replace one this project
       created for the same model (labels app.kubernetes.io/part-of: kfp-distill, kfp-distill/model-name)
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from components.common.errors import InputError
from components.common.inference_service import (
    MODEL_LABEL,
    PART_OF,
    apply_inference_service,
    build_inference_service,
    pod_namespace,
)
from components.register.config import Config
from components.register.registry import register, version_properties

log = logging.getLogger(__name__)


class HandOffRefused(InputError):
    """The model failed an eval gate: it is neither registered nor deployed."""


@dataclass
class Result:
    inference_service_path: str
    registration: dict[str, Any] | None  # None when no registry_url is set
    deployed: str | None  # "created" or "replaced"; None without deploy


def run(config: Config) -> Result:
    evaluation = read_evaluation(Path(config.eval_dir))
    gates = gate_verdicts(evaluation)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    version = config.run_name or config.run_id or "manual"
    service = build_inference_service(
        config.serving,
        model_name=config.model_name,
        storage_uri=config.model_uri,
        namespace=config.serving.namespace or pod_namespace(),
        labels={
            PART_OF[0]: PART_OF[1],
            MODEL_LABEL: label_value(config.model_name),
            "kfp-distill/model-version": label_value(version),
        },
    )
    service_path = output_dir / "inferenceservice.yaml"
    service_path.write_text(yaml.safe_dump(service, sort_keys=False))

    registration = None
    if config.registry_url:
        registered = register(
            config.registry_url,
            model_name=config.model_name,
            version=version,
            model_uri=config.model_uri,
            model_format=config.model_format,
            model_format_version=config.model_format_version,
            storage_key=config.storage_key,
            author=config.author,
            description=f"distilled by kfp-distill, pipeline run {config.run_id or 'by hand'}",
            properties=version_properties(evaluation.get("metrics", {}), gates, config.run_id),
        )
        registration = asdict(registered)
        (output_dir / "registration.json").write_text(json.dumps(registration, indent=2) + "\n")
    deployed = apply_inference_service(service) if config.deploy else None
    return Result(inference_service_path=str(service_path), registration=registration, deployed=deployed)


def read_evaluation(eval_dir: Path) -> dict[str, Any]:
    path = eval_dir / "eval.json"
    if not path.is_file():
        raise InputError(f"eval_dir: {path} does not exist; give the eval stage's results folder")
    try:
        evaluation = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"eval_dir: {path} is not JSON ({error})") from None
    if not isinstance(evaluation, dict):
        raise InputError(f"eval_dir: {path} must hold the eval stage's JSON object")
    return evaluation


def gate_verdicts(evaluation: dict[str, Any]) -> dict[str, str]:
    """{"eval_gate": message, "forgetting_gate": message}; a failed gate refuses the hand-off."""
    verdicts = {}
    for name, key in (("eval_gate", "gate"), ("forgetting_gate", "forgetting_gate")):
        gate = evaluation.get(key) or {}
        if gate.get("passed") is False:
            raise HandOffRefused(f"the model failed the {name.replace('_', ' ')}: {gate.get('message', '')}")
        verdicts[name] = str(gate.get("message", "not run"))
    return verdicts


def label_value(text: str) -> str:
    """A Kubernetes label value: at most 63 of [A-Za-z0-9-_.], starting and ending alphanumeric."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:63]
    return cleaned.strip("-_.") or "none"
