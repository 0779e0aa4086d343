"""Download stage: fetch the student (or a local teacher) into the artifact store, reusing cached copies."""

from components.download.config import Config
from components.download.stage import Result, run

__all__ = ["Config", "Result", "run"]
