"""Eval stage: untrained vs distilled student vs teacher on the test split, an HTML report and a gate."""

from components.evaluate.config import Config, JudgeConfig
from components.evaluate.stage import EvalGateError, Result, run

__all__ = ["Config", "EvalGateError", "JudgeConfig", "Result", "run"]
