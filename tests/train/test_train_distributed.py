"""Two ranks with torchrun on CPU (gloo): each trains on its own records, logs agree, rank 0 saves."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from components.common.config import to_dict

REPO = Path(__file__).resolve().parents[2]


def test_two_ranks_train_one_model_and_share_checkpoints(make_config, tmp_path):
    config = make_config(max_steps=4, save_steps=2, batch_size=4, store_uri=str(tmp_path / "store"))
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump(to_dict(config)))
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "components.train",
            "--config",
            str(config_file),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    # Both ranks print their result; the loss is reduced over the ranks, so they agree.
    losses = re.findall(r'"final_loss": ([0-9.]+)', completed.stdout)
    assert len(losses) == 2 and losses[0] == losses[1]
    summary = json.loads((Path(config.output_dir) / "train_summary.json").read_text())
    assert summary["steps"] == 4
    checkpoints = tmp_path / "store" / "runs" / "local" / "train" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000002", "step-00000004"]
    assert (checkpoints / "step-00000004" / "COMPLETE").is_file()
