from components.common.cli import run_stage_cli
from components.teacher import Config, run

run_stage_cli("teacher", Config, run)
