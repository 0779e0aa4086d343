"""Print image names for the Makefile; they are made in components/common/images.py.

REGISTRY=registry.example.com/ml TAG=3f2a1bc python -m pipelines.images train
registry.example.com/ml/kfp-distill-train:3f2a1bc
"""

import sys

from components.common.images import STAGES, image_for

if __name__ == "__main__":
    for name in sys.argv[1:] or STAGES:
        print(image_for(name))
