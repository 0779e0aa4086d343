"""Eval stage: untrained vs distilled student vs teacher on the test split, an HTML report and a gate.

Importing the package loads its Config only (no torch, no clients): `run` and `Result` live in stage.py,
so the pipeline's run check reads every stage's Config in one small image.
"""

from components.evaluate.config import Config, JudgeConfig

__all__ = ["Config", "JudgeConfig"]
