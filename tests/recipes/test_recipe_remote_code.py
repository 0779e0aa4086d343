"""trust_remote_code is opt-in and pinned: refused without a commit, the hub download then brings the
repository's code with a marker of its digests, and the loaders run that code only while it matches and
the run opted in (a marker someone wrote beside code in a folder does not suffice)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from components.common.config import from_dict
from components.common.errors import ConfigError
from components.common.model_sources import hf_snapshot_arguments
from components.common.remote_code import allows_remote_code, write_marker
from components.download import Config as DownloadConfig
from components.evaluate.sampling import load_model
from components.merge import Config as MergeConfig
from components.merge.stage import run as run_merge
from pipelines.submit import main
from tests.recipes.conftest import RECIPES

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REMOTE_CODE = """from transformers import Qwen2Config, Qwen2ForCausalLM


class TinyRemoteConfig(Qwen2Config):
    model_type = "tinyremote"


class TinyRemoteForCausalLM(Qwen2ForCausalLM):
    config_class = TinyRemoteConfig
"""


def download(tmp_path, source: str, **fields) -> DownloadConfig:
    return from_dict(
        DownloadConfig, {"source": source, "output_dir": str(tmp_path), "trust_remote_code": True, **fields}
    )


@pytest.mark.parametrize(
    "source, revision",
    [
        ("hf://Qwen/Qwen-7B-Chat", None),
        ("hf://Qwen/Qwen-7B-Chat@main", None),
        ("hf://Qwen/Qwen-7B-Chat", "v1.0"),
    ],
)
def test_remote_code_without_a_pinned_commit_is_refused(tmp_path, source, revision):
    with pytest.raises(ConfigError, match="trust_remote_code: the code would run in every stage, so pin it"):
        download(tmp_path, source, revision=revision)


def test_remote_code_only_from_a_hub_and_pinned(tmp_path):
    assert download(tmp_path, f"hf://Qwen/Qwen-7B-Chat@{COMMIT}").trust_remote_code
    assert download(tmp_path, "hf://Qwen/Qwen-7B-Chat", revision=COMMIT).trust_remote_code
    assert download(tmp_path, "modelscope://qwen/Qwen-7B-Chat@v1.1.9").trust_remote_code
    with pytest.raises(ConfigError, match="only hf:// and modelscope:// sources may bring code"):
        download(tmp_path, "s3://models/qwen")
    assert not from_dict(DownloadConfig, {"source": "hf://a/b", "output_dir": "o"}).trust_remote_code
    code = hf_snapshot_arguments("a/b", COMMIT, tmp_path, None, code=True)
    plain = hf_snapshot_arguments("a/b", COMMIT, tmp_path, None)
    assert "*.py" in code["allow_patterns"] and "*.py" not in code["ignore_patterns"]
    assert "*.py" not in plain["allow_patterns"] and "*.py" in plain["ignore_patterns"]


def test_the_submitter_refuses_an_unpinned_opt_in(package, capsys):  # noqa: F811
    recipe = str(next(path for path in RECIPES if path.stem == "api_teacher_lora_sft"))
    argv = [
        "--check",
        "--config",
        recipe,
        "--package",
        str(package),
        "--set",
        "student_trust_remote_code=true",
    ]
    assert main(argv) == 2
    assert "trust_remote_code: the code would run in every stage" in capsys.readouterr().err


@pytest.fixture
def remote_code_model(tiny_model_dir, tmp_path) -> Path:
    """The tiny student as a model whose architecture exists only in its own modeling_tiny.py."""
    folder = tmp_path / "remote-model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="tinyremote",
        architectures=["TinyRemoteForCausalLM"],
        auto_map={
            "AutoConfig": "modeling_tiny.TinyRemoteConfig",
            "AutoModelForCausalLM": "modeling_tiny.TinyRemoteForCausalLM",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_tiny.py").write_text(REMOTE_CODE)
    return folder


def test_loaders_run_the_models_code_only_while_the_marker_vouches_for_it(remote_code_model):
    cpu = torch.device("cpu")
    assert not allows_remote_code(remote_code_model, opted_in=True)
    with pytest.raises(ValueError, match="tinyremote|trust_remote_code"):
        load_model(remote_code_model, "auto", cpu, "trained_dir", remote_code=True)

    write_marker(remote_code_model, "hf://org/tiny-remote", COMMIT)
    model, _ = load_model(remote_code_model, "auto", cpu, "trained_dir", remote_code=True)
    assert type(model).__name__ == "TinyRemoteForCausalLM"

    with (remote_code_model / "modeling_tiny.py").open("a") as code:
        code.write("import os  # changed after the download\n")
    assert not allows_remote_code(remote_code_model, opted_in=True)
    (remote_code_model / "modeling_tiny.py").write_text(REMOTE_CODE)
    (remote_code_model / "extra_code.py").write_text("x = 1\n")
    assert not allows_remote_code(remote_code_model, opted_in=True)


def test_a_marker_beside_the_code_runs_nothing_unless_the_run_opted_in(remote_code_model, tmp_path):
    ran = tmp_path / "remote-code-ran"
    (remote_code_model / "modeling_tiny.py").write_text(f"open({str(ran)!r}, 'w').close()\n" + REMOTE_CODE)
    write_marker(remote_code_model, "hf://org/tiny-remote", COMMIT)  # as anyone who writes the folder can
    merge = {"student_dir": str(remote_code_model), "trained_dir": str(remote_code_model), "device": "cpu"}

    refused = None
    try:
        run_merge(from_dict(MergeConfig, {**merge, "output_dir": str(tmp_path / "a")}))
    except ValueError as error:
        refused = error
    assert not ran.exists()
    assert refused is not None and "trust_remote_code" in str(refused)

    result = run_merge(
        from_dict(MergeConfig, {**merge, "output_dir": str(tmp_path / "b"), "trust_remote_code": True})
    )
    assert ran.exists() and result.parameters > 0
