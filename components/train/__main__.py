"""python -m components.train --config train.yaml [--set key=value ...]"""

from components.common.cli import run_stage_cli
from components.train import Config

if __name__ == "__main__":
    run_stage_cli("train", Config, "components.train.stage:run")
