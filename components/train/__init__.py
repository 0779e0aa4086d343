"""The train stage: distill teacher records into the student (SFT, logit KD, curriculum), LoRA/QLoRA/full.

    python -m components.train --config train.yaml [--set key=value ...]

`run(config)` trains, writes the adapter (or full model), the tokenizer and train_summary.json to
`config.output_dir` and TensorBoard events to `config.tensorboard_dir`, and returns a `Result`.
"""

from __future__ import annotations

import json
from pathlib import Path

from components.train.config import Config, IntermediateSettings, KDSettings, LoraSettings, StageSettings
from components.train.trainer import DistillTrainer, Result

__all__ = ["Config", "IntermediateSettings", "KDSettings", "LoraSettings", "Result", "StageSettings", "run"]


def run(config: Config) -> Result:
    from components.train.launch import maybe_relaunch

    if maybe_relaunch(config):
        # The ranks trained and saved; this process only reports what they wrote.
        summary = json.loads((Path(config.output_dir) / "train_summary.json").read_text())
        return Result(
            steps=summary["steps"],
            final_loss=summary["final_loss"],
            output_dir=config.output_dir,
            method=summary["method"],
            tokens_per_second=summary["tokens_per_second"],
            train_seconds=summary["train_seconds"],
            loss_parts=summary["final_loss_parts"],
            resumed_from=summary["resumed_from"],
        )
    trainer = DistillTrainer(config)
    trainer.setup()
    result = trainer.train()
    trainer.save(result)
    return result
