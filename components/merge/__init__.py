"""Merge stage: fold the trained adapter into the student and verify the merged weights.

Importing the package loads its Config only (no torch, no clients): `run` and `Result` live in stage.py,
so the pipeline's run check reads every stage's Config in one small image.
"""

from components.merge.config import Config

__all__ = ["Config"]
