"""Two ranks resuming from a tampered checkpoint both stop with the refusal; none waits for the other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from components.common.config import to_dict
from tests.train.conftest import plant_code_in_optimizer_state

REPO = Path(__file__).resolve().parents[2]


def torchrun(config_file: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(
        [*command, "-m", "components.train", "--config", str(config_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_both_ranks_refuse_a_tampered_checkpoint_and_run_nothing_from_it(make_config, tmp_path):
    config = make_config(max_steps=4, save_steps=2, batch_size=4, store_uri=str(tmp_path / "store"))
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump(to_dict(config)))
    assert torchrun(config_file).returncode == 0
    evidence = tmp_path / "code-ran.txt"
    plant_code_in_optimizer_state(config, evidence, rewrite_marker=False)

    again = torchrun(config_file)

    assert again.returncode != 0
    refusals = [line for line in again.stderr.splitlines() if "is not the file that was saved" in line]
    assert len(refusals) == 2, again.stderr[-3000:]  # one line from each rank, no hang, no traceback
    assert not evidence.exists()
