"""Register stage: hands a gated model over, to Kubeflow Model Registry and to KServe.

Importing the package loads its Config only (`run` and `Result` live in stage.py), so the pipeline's run
check reads every stage's Config in one small image.
"""

from components.register.config import Config, ServingConfig

__all__ = ["Config", "ServingConfig"]
