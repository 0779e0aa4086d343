"""Download stage: fetch the student (or a local teacher) into the artifact store, reusing cached copies.

Importing the package loads its Config only (no torch, no clients): `run` and `Result` live in stage.py,
so the pipeline's run check reads every stage's Config in one small image.
"""

from components.download.config import Config

__all__ = ["Config"]
