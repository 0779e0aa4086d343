from components.common.cli import run_stage_cli
from components.teacher_server import Config

run_stage_cli("teacher_server", Config, "components.teacher_server.stage:run")
