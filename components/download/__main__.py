from components.common.cli import run_stage_cli
from components.download import Config
from components.download.stage import run

run_stage_cli("download", Config, run)
