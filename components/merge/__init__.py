"""Merge stage: fold the trained adapter into the student and verify the merged weights."""

from components.merge.config import Config
from components.merge.stage import MergeVerificationError, Result, run

__all__ = ["Config", "MergeVerificationError", "Result", "run"]
