from components.common.cli import run_stage_cli
from components.teacher import Config

run_stage_cli("teacher", Config, "components.teacher.stage:run")
