"""DeepSpeed ZeRO-2 and ZeRO-3 on two CPU ranks (torchrun, gloo): the train stage's engine, checkpoints
and resume as on GPUs; a ZeRO-3 full fine-tune then merges and evaluates. DeepSpeed's comm op is built
once into ~/.cache/torch_extensions (minutes the first time), and its build fails in one line without its
tools or behind a dead lock."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from components.common.config import from_dict, to_dict
from components.common.errors import ConfigError
from components.evaluate import Config as EvalConfig
from components.evaluate.stage import run as evaluate
from components.merge import Config as MergeConfig
from components.merge.stage import run as merge
from components.train import deepspeed_cpu
from components.train.stage import run
from tests.train.conftest import start_until_checkpoint

REPO = Path(__file__).resolve().parents[2]


def torchrun_command(config, config_file: Path) -> list[str]:
    config_file.write_text(yaml.safe_dump(to_dict(config)))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return [*launcher, "-m", "components.train", "--config", str(config_file)]


def two_ranks(config, config_file: Path) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        torchrun_command(config, config_file),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


@pytest.mark.parametrize(("zero", "precision"), [("zero2", "bf16"), ("zero2_offload", "fp32")])
def test_zero2_lora_trains_on_two_cpu_ranks_over_gloo(make_config, tmp_path, zero, precision):
    config = make_config(deepspeed=zero, precision=precision, max_steps=3, batch_size=4)
    completed = two_ranks(config, tmp_path / "train.yaml")
    # Each rank prints its result; the loss is reduced over the two ranks, so they agree.
    losses = re.findall(r'"final_loss": ([0-9.]+)', completed.stdout)
    assert len(losses) == 2 and losses[0] == losses[1]
    assert f"deepspeed: {zero} runs on the CPU" in completed.stdout + completed.stderr
    summary = json.loads((Path(config.output_dir) / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["deepspeed"] == zero and summary["precision"] == precision
    weights = load_file(f"{config.output_dir}/adapter_model.safetensors")
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and all(w.abs().sum() > 0 for w in lora_b), "every LoRA B matrix moved from zero"


def train_until_killed(command: list[str], store_uri: str, run_id: str, step: int) -> None:
    """Start two ranks and SIGKILL torchrun and both ranks once checkpoint `step` is complete."""
    process = start_until_checkpoint(command, store_uri, run_id, step, hang_guard_s=600)
    # torchrun starts each rank in a session of its own: a node loss takes them all.
    agent = psutil.Process(process.pid)
    for doomed in [*agent.children(recursive=True), agent]:
        doomed.kill()
    process.wait()


def test_zero3_full_finetune_killed_at_a_checkpoint_resumes_to_the_same_weights_then_merges_and_evaluates(
    make_config, tmp_path, tiny_model_dir, reversal_data
):
    def config(name: str):
        return make_config(
            method="full",
            deepspeed="zero3",
            max_steps=8,
            save_steps=2,
            batch_size=4,
            seed=3,
            store_uri=str(tmp_path / f"store-{name}"),
            output_dir=str(tmp_path / name),
            tensorboard_dir=str(tmp_path / f"tb-{name}"),
        )

    reference = config("uninterrupted")
    two_ranks(reference, tmp_path / "reference.yaml")
    interrupted = config("killed")
    command = torchrun_command(interrupted, tmp_path / "killed.yaml")
    train_until_killed(command, interrupted.store_uri, interrupted.run_id, step=2)
    assert not (Path(interrupted.output_dir) / "model.safetensors").exists()
    resumed = two_ranks(interrupted, tmp_path / "killed.yaml")
    resumed_from = {int(step) for step in re.findall(r'"resumed_from": (\d+)', resumed.stdout)}
    assert len(resumed_from) == 1 and resumed_from <= {2, 4, 6}, resumed.stdout[-2000:]

    got = load_file(f"{interrupted.output_dir}/model.safetensors")
    want = load_file(f"{reference.output_dir}/model.safetensors")
    base = load_file(f"{tiny_model_dir}/model.safetensors")
    assert got.keys() == want.keys() == base.keys(), "ZeRO-3 gathered every weight into the saved model"
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4)
    assert any(not torch.equal(want[k].float(), base[k].float()) for k in base)

    merged = merge(MergeConfig(str(tiny_model_dir), reference.output_dir, str(tmp_path / "merged")))
    # A full fine-tune has nothing to fold in: it passes through re-sharded, as it was gathered.
    assert merged.method == "full" and merged.parameters == sum(w.numel() for w in want.values())
    scored = evaluate(
        from_dict(
            EvalConfig,
            {
                "student_dir": str(tiny_model_dir),
                "trained_dir": str(tmp_path / "merged"),
                "data_dir": str(reversal_data),
                "output_dir": str(tmp_path / "eval"),
                "max_new_tokens": 8,
                "batch_size": 4,
                "max_samples": 3,
            },
        )
    )
    assert (tmp_path / "eval" / "eval.json").is_file()
    assert scored.metrics["distilled_perplexity"] < scored.metrics["untrained_perplexity"]
    print(f"zero3 full fine-tune merged and evaluated: {scored}")


def test_zero2_without_a_compiler_or_ninja_fails_in_one_line(make_config, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    config = make_config(deepspeed="zero2")
    with pytest.raises(
        ConfigError, match=r"deepspeed: 'zero2' on a CPU builds .* c\+\+ and ninja is not on PATH"
    ):
        run(config)
    assert not os.path.exists(config.output_dir)


def test_zero3_behind_a_lock_of_a_killed_build_fails_naming_it(make_config, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    lock = deepspeed_cpu.build_dir() / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    # A young lock may belong to a build that is running: the build waits for it, within the bound.
    monkeypatch.setattr(deepspeed_cpu, "BUILD_BOUND_S", 5)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=f"within 5 s; it waited on {lock}, left by another build"):
        run(make_config(deepspeed="zero3"))
    assert time.monotonic() - started < 60
    assert lock.exists(), "another process's lock is not ours to delete"
    # Older than any build takes: left by a killed one, said at once.
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    with pytest.raises(ConfigError, match=f"{lock} is left by a killed build .* delete it and run again"):
        run(make_config(deepspeed="zero3"))
