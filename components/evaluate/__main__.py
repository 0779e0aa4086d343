from components.common.cli import run_stage_cli
from components.evaluate import Config, run

run_stage_cli("evaluate", Config, run)
