from components.common.cli import run_stage_cli
from components.merge import Config

run_stage_cli("merge", Config, "components.merge.stage:run")
