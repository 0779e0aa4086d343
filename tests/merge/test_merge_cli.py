"""The merge stage runs from the command line with a YAML config, as the DESIGN promises for debugging."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml


def test_python_m_components_merge_with_a_yaml_config(tiny_model_dir, make_adapter, tmp_path):
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter")
    config = {
        "student_dir": str(tiny_model_dir),
        "trained_dir": str(adapter),
        "output_dir": str(tmp_path / "out"),
    }
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "components.merge",
            "--config",
            str(tmp_path / "merge.yaml"),
            "--set",
            "max_shard_size=400KB",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout[done.stdout.index("{\n") :])
    assert printed["merged"] is True and printed["shards"] >= 2
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
