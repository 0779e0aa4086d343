from components.common.cli import run_stage_cli
from components.register import Config
from components.register.stage import run

run_stage_cli("register", Config, run)
