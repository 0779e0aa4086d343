"""The served teacher's settings, checked when loaded: what it serves and how long it may take to start."""

from __future__ import annotations

from dataclasses import dataclass, field

from components.common.errors import ConfigError, InputError
from components.common.inference_service import ServingConfig
from components.common.model_sources import parse_source

# The model sources KServe's storage initializer fetches by itself.
SERVED_SCHEMES = ("hf", "s3")


@dataclass
class Config:
    """source: the teacher model, as student_source (hf://org/name[@revision] or s3://bucket/prefix).
    run_id: the run it serves, which names it (one server per run).
    serving: the InferenceService (gpus: at least 1, as vLLM needs a GPU).
    ready_timeout_s: how long creating it may take until Ready (image pull, download, model load).
    poll_s: seconds between readiness checks.
    """

    source: str
    run_id: str
    serving: ServingConfig = field(default_factory=ServingConfig)
    ready_timeout_s: float = 1800.0
    poll_s: float = 10.0

    def __post_init__(self) -> None:
        try:
            scheme = parse_source(self.source).scheme
        except InputError as error:
            raise ConfigError(f"teacher_server_source: {error}") from None
        if scheme not in SERVED_SCHEMES:
            raise ConfigError(
                f"teacher_server_source: {self.source!r} is a {scheme} source; KServe fetches hf://org/name or "
                "s3://bucket/prefix by itself"
            )
        if not self.run_id:
            raise ConfigError("run_id: the served teacher is named after its run; give the run id")
        if self.serving.gpus < 1:
            raise ConfigError(
                f"teacher_server_gpus: {self.serving.gpus}; the vLLM backend needs at least 1 GPU"
            )
        if not self.ready_timeout_s > 0 or not self.poll_s > 0:
            raise ConfigError("ready_timeout_s, poll_s: must be positive")
