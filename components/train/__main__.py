"""python -m components.train --config train.yaml [--set key=value ...]"""

from components.common.cli import run_stage_cli
from components.train import Config
from components.train.stage import run

if __name__ == "__main__":
    run_stage_cli("train", Config, run)
