"""Register stage: hands a gated model over, to Kubeflow Model Registry and to KServe."""

from components.register.config import Config, ServingConfig
from components.register.stage import HandOffRefused, Result, run

__all__ = ["Config", "HandOffRefused", "Result", "ServingConfig", "run"]
