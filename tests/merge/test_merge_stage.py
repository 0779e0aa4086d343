"""The merge stage folds an adapter into its base, writes sharded safetensors and proves the result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.common.config import from_dict
from components.common.errors import ConfigError, InputError
from components.merge import Config
from components.merge.stage import MergeVerificationError, run
from components.merge.verify import probe_batch, probe_logits


def logits_of(model_dir: Path, prompts: list[str]) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return probe_logits(model, probe_batch(tokenizer, prompts, torch.device("cpu")))


def test_lora_merge_matches_base_plus_adapter_and_writes_a_plain_model(tiny_model_dir, trained_dir, tmp_path):
    out, data = tmp_path / "merged", tmp_path / "data"
    data.mkdir()
    summary = {
        "teacher": {"provider": "deepseek", "model": "deepseek-chat"},
        "config": {"dataset": "s3://b/p.jsonl"},
        "metrics": {"train": 900, "test": 100},
    }
    (data / "summary.json").write_text(json.dumps(summary))
    result = run(Config(str(tiny_model_dir), str(trained_dir), str(out), data_dir=str(data)))

    assert result.merged and result.verified and result.method == "lora" and result.dtype == "fp32"
    assert result.max_logit_diff < 1e-4 <= result.tolerance
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "README.md",
        "merge_summary.json",
    } <= names
    assert not any(name.startswith("adapter_") for name in names)
    # The adapter really changed the model: the merged logits are far from the base's own.
    prompts = ["Reverse the letters of: abc"]
    assert (logits_of(out, prompts) - logits_of(tiny_model_dir, prompts)).abs().max() > 0.1
    base_norm = AutoModelForCausalLM.from_pretrained(tiny_model_dir).model.norm.weight
    assert torch.allclose(AutoModelForCausalLM.from_pretrained(out).model.norm.weight, base_norm * 1.5)
    card = (out / "README.md").read_text()
    assert "base_model: tiny://qwen2" in card and "| Method | lora |" in card and "1.25" in card
    assert "| Teacher | deepseek/deepseek-chat |" in card
    assert "| Training data | s3://b/p.jsonl (900 training records) |" in card
    assert set(result.metrics) >= {"merge_max_logit_diff", "merge_size_bytes", "merge_parameters"}


def test_max_shard_size_splits_the_weights_into_indexed_shards(tiny_model_dir, trained_dir, tmp_path):
    out = tmp_path / "merged"
    config = Config(str(tiny_model_dir), str(trained_dir), str(out), max_shard_size="300KB")
    result = run(config)

    shards = sorted(out.glob("*.safetensors"))
    assert result.shards == len(shards) >= 3
    assert all(p.stat().st_size <= 300_000 + 70_000 for p in shards)  # one tensor may overflow a shard
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    assert result.verified  # the reload went through the index


def test_merge_in_bf16_fails_loudly_when_rounding_exceeds_a_strict_tolerance(
    tiny_model_dir, trained_dir, tmp_path
):
    config = Config(str(tiny_model_dir), str(trained_dir), str(tmp_path / "m"), dtype="bf16", tolerance=1e-6)
    with pytest.raises(MergeVerificationError, match=r"over tolerance 1e-06 by [0-9.e-]+"):
        run(config)


def test_merge_onto_the_wrong_base_is_caught_by_the_check(
    tiny_model_dir, tiny_teacher_dir, trained_dir, tmp_path
):
    # The teacher is wider (hidden 192): the adapter's shapes do not fit, and the stage says which folders.
    config = Config(str(tiny_teacher_dir), str(trained_dir), str(tmp_path / "m"))
    with pytest.raises(InputError, match="cannot apply the adapter"):
        run(config)


def test_full_fine_tuning_output_passes_through_resharded_in_the_asked_dtype(tiny_model_dir, tmp_path):
    full = tmp_path / "full"
    shutil.copytree(tiny_model_dir, full)
    (full / "train_summary.json").write_text(json.dumps({"method": "full", "steps": 5, "final_loss": 0.5}))
    out = tmp_path / "merged"
    result = run(Config(str(tiny_model_dir), str(full), str(out), dtype="bf16", max_shard_size="500KB"))

    assert not result.merged and not result.verified and result.method == "full"
    assert result.shards >= 2 and result.dtype == "bf16"
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert next(reloaded.parameters()).dtype == torch.bfloat16
    original = AutoModelForCausalLM.from_pretrained(full)
    for (name, a), (_, b) in zip(original.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert torch.equal(a.to(torch.bfloat16), b), name
    assert "not applicable" in (out / "README.md").read_text()


def test_config_rejects_bad_values_naming_the_field():
    base = {"student_dir": "b", "trained_dir": "a", "output_dir": "o"}
    with pytest.raises(ConfigError, match="max_shard_size: '2 gigs' is not a size"):
        from_dict(Config, {**base, "max_shard_size": "2 gigs"})
    with pytest.raises(ConfigError, match="dtype: 'int8' is not one of"):
        from_dict(Config, {**base, "dtype": "int8"})
    with pytest.raises(ConfigError, match="tolerance: -1.0 must be positive"):
        from_dict(Config, {**base, "tolerance": -1})
    with pytest.raises(ConfigError, match="output_dir: a is also an input folder"):
        from_dict(Config, {**base, "output_dir": "a"})


def test_missing_train_output_is_an_input_error(tiny_model_dir, tmp_path):
    with pytest.raises(InputError, match="trained_dir: .* is not a folder"):
        run(Config(str(tiny_model_dir), str(tmp_path / "nowhere"), str(tmp_path / "out")))


def test_a_folder_that_is_neither_adapter_nor_model_is_named(tiny_model_dir, trained_dir, tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(
        InputError, match="trained_dir: .* holds neither adapter_config.json .* nor config.json"
    ):
        run(Config(str(tiny_model_dir), str(tmp_path / "train"), str(tmp_path / "out")))
    with pytest.raises(InputError, match="student_dir: .* holds no config.json"):
        run(Config(str(tmp_path / "train"), str(trained_dir), str(tmp_path / "out")))
