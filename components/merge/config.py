"""Configuration of the merge stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from components.common.config import exposed
from components.common.errors import ConfigError
from components.common.remote_code import opt_in_field

Dtype = Literal["auto", "bf16", "fp16", "fp32"]

# Default probe prompts for the merge check: short, mixed tasks and languages, so that many vocabulary
# rows and every layer take part in the comparison.
PROBE_PROMPTS = [
    "Reverse the letters of: merge",
    "What is 17 + 25? Answer with a number.",
    "Write one sentence about the sea.",
    "用一句话介绍你自己。",
]

# Largest |merged - (base + adapter)| logit difference accepted when `tolerance` is not given. Merging
# rounds W + BA once into the target precision while the unmerged path rounds base and adapter outputs
# separately, so the noise floor scales with the precision: ~1e-5 in fp32, ~1e-2 in fp16, ~1e-1 in bf16
# (8 mantissa bits) on real models. A broken merge (wrong scaling, missing module) is off by whole units.
DEFAULT_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2, "bf16": 5e-1}


@dataclass
class Config:
    """What to merge and how to write it.

    Inputs
      student_dir: the student the adapter was trained on (a Hugging Face model folder, unquantized or a
          pre-quantized checkpoint; quantized bases are dequantized before merging).
      trained_dir: the train stage's output: a PEFT adapter folder (has adapter_config.json) or, after full
          fine-tuning, a whole model folder, which passes through re-sharded.
    Output
      output_dir: the folder that receives the merged Hugging Face model.
      max_shard_size, dtype: see their help; QLoRA adapters are merged onto a bf16 base (never onto
          4-bit weights) whatever the dtype.
      device: where merging and the check run; "auto" picks CUDA when present.
    Verification
      tolerance: largest accepted |logit| difference between the reloaded merged model and base + adapter
          on `probe_prompts`; None picks a default for the dtype (see DEFAULT_TOLERANCE). Over it the stage
          fails.
      probe_prompts: user messages fed to both models (through the chat template when there is one).
    Model card
      data_dir: the teacher dataset folder (optional); its summary.json names the teacher and the data.
      teacher, dataset: override those names. The train stage's train_summary.json fills in method, steps
          and final loss.
    """

    student_dir: str
    trained_dir: str
    output_dir: str
    max_shard_size: str = field(
        default="2GB",
        metadata=exposed(
            "merge_max_shard_size", "largest safetensors file of the merged model, e.g. 2GB or 500MB."
        ),
    )
    dtype: Dtype = field(
        default="auto",
        metadata=exposed(
            "merge_dtype", "dtype of the merged weights: auto (the base's), bf16, fp16 or fp32."
        ),
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # The run's opt-in to the student's own code (components/common/remote_code.py).
    trust_remote_code: bool = opt_in_field()
    tolerance: float | None = None
    probe_prompts: list[str] = field(default_factory=lambda: list(PROBE_PROMPTS))
    data_dir: str = ""
    teacher: str = ""
    dataset: str = ""

    def __post_init__(self) -> None:
        for name in ("student_dir", "trained_dir", "output_dir"):
            if not getattr(self, name):
                raise ConfigError(f"{name}: empty; give a folder path")
        if Path(self.output_dir).resolve() in (
            Path(self.student_dir).resolve(),
            Path(self.trained_dir).resolve(),
        ):
            raise ConfigError(
                f"output_dir: {self.output_dir} is also an input folder; merging replaces the weights files "
                "there, so give a new folder"
            )
        if not _is_size(self.max_shard_size):
            raise ConfigError(
                f"max_shard_size: {self.max_shard_size!r} is not a size; write it like '2GB', '500MB' or '10KB'"
            )
        if self.tolerance is not None and self.tolerance <= 0:
            raise ConfigError(f"tolerance: {self.tolerance} must be positive (or null for the dtype default)")
        if not self.probe_prompts or not all(p.strip() for p in self.probe_prompts):
            raise ConfigError("probe_prompts: give at least one non-empty prompt to verify the merge with")


def _is_size(text: str) -> bool:
    number = text.upper().removesuffix("IB").removesuffix("B").rstrip("KMGT")
    return text.upper()[-1:] == "B" and number.isdigit() and int(number) > 0
