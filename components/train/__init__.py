"""The train stage: distill teacher records into the student (SFT, logit KD, curriculum), LoRA/QLoRA/full.

Module map: config.py (fields), stage.py (`run(config) -> Result`), component.py (the KFP component),
trainer.py (the recipe: setup, loss steps, save), data.py, batching.py, varlen.py (records to batches),
losses.py, objective.py, sparse_kd.py, intermediate.py (the loss), curriculum.py (phases), modeling.py
(student and teacher), launch.py (devices, multi-GPU), checkpoint.py (checkpoints in the store, save and
resume), tracking.py and progress.py (logs), multinode/ (a PyTorchJob across nodes).

Importing the package loads its Config only (no torch, no clients): `run` and `Result` live in stage.py,
so the pipeline's run check reads every stage's Config in one small image.
"""

from components.train.config import Config, IntermediateSettings, KDSettings, LoraSettings, PhaseSettings

__all__ = ["Config", "IntermediateSettings", "KDSettings", "LoraSettings", "PhaseSettings"]
