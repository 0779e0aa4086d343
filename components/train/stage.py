"""The train stage: distill teacher records into the student (SFT, logit KD, curriculum), LoRA/QLoRA/full.

    python -m components.train --config train.yaml [--set key=value ...]

`run(config)` trains, writes the adapter (or full model), the tokenizer and train_summary.json to
`config.output_dir` and TensorBoard events to `config.tensorboard_dir`, and returns a `Result`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.train.config import Config
from components.train.launch import maybe_relaunch
from components.train.trainer import DistillTrainer


@dataclass
class Result:
    steps: int
    final_loss: float
    output_dir: str
    method: str = "lora"
    tokens_per_second: float = 0.0
    train_seconds: float = 0.0
    # The loss parts of the last logging window: ce, kd, hidden_loss, ... (per token or per batch).
    loss_parts: dict[str, float] = field(default_factory=dict)
    # The checkpoint step this attempt continued from (0: it started from the input model).
    resumed_from: int = 0
    # How a teacher's tokens lined up with the student's (cross_tokenizer.AlignmentCounts), when KD used
    # stored or scored top-k: unaligned records trained on cross-entropy only.
    kd_alignment: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_summary(cls, summary: dict[str, Any], output_dir: str) -> Result:
        """The result train_summary.json records (written here, by the ranks, or by a PyTorchJob)."""
        return cls(
            steps=summary["steps"],
            final_loss=summary["final_loss"],
            output_dir=output_dir,
            method=summary.get("method", "lora"),
            tokens_per_second=summary.get("tokens_per_second", 0.0),
            train_seconds=summary.get("train_seconds", 0.0),
            loss_parts=summary.get("final_loss_parts", {}),
            resumed_from=summary.get("resumed_from", 0),
            kd_alignment=summary.get("kd_alignment", {}),
        )

    @property
    def metrics(self) -> dict[str, float]:
        return {
            "train_steps": float(self.steps),
            "train_final_loss": self.final_loss,
            "train_tokens_per_second": self.tokens_per_second,
            "train_seconds": self.train_seconds,
            **{f"train_final_{name}": value for name, value in self.loss_parts.items()},
        }


def run(config: Config) -> Result:
    if maybe_relaunch(config):
        # The ranks trained and saved; this process only reports what they wrote.
        summary = json.loads((Path(config.output_dir) / "train_summary.json").read_text())
        return Result.from_summary(summary, config.output_dir)
    trainer = DistillTrainer(config)
    trainer.setup()
    summary = trainer.train()
    trainer.save(summary)
    trainer.leave_process_group()
    return Result.from_summary(summary, config.output_dir)
