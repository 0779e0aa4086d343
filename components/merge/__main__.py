from components.common.cli import run_stage_cli
from components.merge import Config
from components.merge.stage import run

run_stage_cli("merge", Config, run)
