from components.common.cli import run_stage_cli
from components.download import Config, run

run_stage_cli("download", Config, run)
