"""The one place image names are made; the Makefile (build, push, through `python -m pipelines.images`)
and the components' base images both use it.

REGISTRY=registry.example.com/ml TAG=3f2a1bc python -m pipelines.images train
registry.example.com/ml/kfp-distill-train:3f2a1bc
"""

import os
from importlib.metadata import PackageNotFoundError, version

STAGES = ("download", "teacher", "train", "merge", "eval")
# The package each stage's image runs (the eval stage's code lives in components/evaluate).
STAGE_PACKAGES = {stage: f"components.{'evaluate' if stage == 'eval' else stage}" for stage in STAGES}
DEFAULT_REGISTRY = "ghcr.io/kfp-distill"
# Pipeline steps that run in another stage's image rather than their own: the register step needs only
# what the eval image holds (the model-registry and kubernetes clients are in the eval extra).
SHARED_IMAGES = {"register": "eval"}


def default_tag() -> str:
    try:
        return version("kfp-distill")
    except PackageNotFoundError:
        return "dev"


def image_for(stage: str) -> str:
    """The image of `stage` (or of the stage whose image it shares), from the REGISTRY and TAG environment
    variables at compile time."""
    stage = SHARED_IMAGES.get(stage, stage)
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    registry = os.environ.get("REGISTRY") or DEFAULT_REGISTRY
    tag = os.environ.get("TAG") or default_tag()
    return f"{registry.rstrip('/')}/kfp-distill-{stage}:{tag}"
