from components.common.cli import run_stage_cli
from components.evaluate import Config
from components.evaluate.stage import run

run_stage_cli("evaluate", Config, run)
