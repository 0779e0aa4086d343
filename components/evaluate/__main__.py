from components.common.cli import run_stage_cli
from components.evaluate import Config

run_stage_cli("evaluate", Config, "components.evaluate.stage:run")
