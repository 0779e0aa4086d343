from components.common.cli import run_stage_cli
from components.register import Config

run_stage_cli("register", Config, "components.register.stage:run")
