from components.common.cli import run_stage_cli
from components.download import Config

run_stage_cli("download", Config, "components.download.stage:run")
