from components.common.cli import run_stage_cli
from components.teacher import Config
from components.teacher.stage import run

run_stage_cli("teacher", Config, run)
