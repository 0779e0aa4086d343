"""What a recipe changes to run on a laptop, shared by `python -m pipelines.run_local --config <recipe>` and
the recipe tests (tests/recipes), so both substitute the same things:

- the models: a tiny student, and a tiny local teacher for a local or KD teacher (adapters dropped);
- the teacher APIs: the loopback demo teacher (`openai` protocol), for the judge too;
- what needs a GPU (`gpu_swaps`): GPU counts to 0, flash-attn to sdpa, fp16 to bf16 (accelerate
  autocasts fp16 only on a GPU), a vLLM server to the demo teacher; the recipe's method, DeepSpeed stage
  (on one CPU rank), bf16 and bitsandbytes (8-bit teachers, a 4-bit eval: the CUDA code on the CPU) stay;
- the data: a small generated dataset in the recipe's own format (raw text, messages with gold answers,
  sharegpt, prompts), small teacher-data folders for the curriculum's extra datasets, and a small
  validation file for eval_validation;
- the length: a few steps per phase, a small evaluation;
- sparse top-k KD: the teacher API serves the tiny teacher (the student's tokenizer) instead of the demo
  teacher, whose log-probabilities are per word and match no student token.

`laptop_run(params, folder)` returns the changed parameters and one line per substitution; the recipe
tests (tests/recipes/test_recipe_pipelines.py) make the same GPU swaps through `gpu_swaps`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.common.config import deep_merge
from components.common.records import Record, record_id, write_records
from pipelines.demo_teacher import demo_words, write_demo_dataset

# What every recipe run on a laptop changes: the loopback teacher, a tiny student, no GPUs, tiny evaluation.
STAND_INS = {
    "student_source": "tiny://qwen2?warmup_steps=0",
    "teacher_provider": "openai",
    "teacher_model": "demo-teacher",
    "teacher_concurrency": 8,
    "teacher_max_tokens": 24,
    "train_gpus": 0,
    "train_batch_size": 4,
    "eval_max_new_tokens": 8,
    "eval_max_samples": 4,
    "eval_batch_size": 4,
}
TINY_TEACHER = "tiny://qwen2?warmup_steps=0&hidden=192&layers=3&heads=6&kv_heads=2&seed=1"
DEMO_TEXT = (
    "# 第一章\n工业革命首先发生在英国。蒸汽机的改良让工厂不再依赖水力，城市迅速扩张，铁路把煤和布运往全国。"
    "工人离开农村进入城市，新的阶层随之出现。\n## Notes\nThe steam engine freed factories from rivers. "
    "Railways carried coal and cloth across the country, and towns grew around the new mills.\n"
) * 4


@dataclass
class LaptopRun:
    params: dict[str, Any]
    substituted: list[str] = field(default_factory=list)
    served_model: Path | None = None  # a model the teacher API serves instead of the demo teacher


def laptop_run(params: dict[str, Any], folder: Path, max_steps: int = 4) -> LaptopRun:
    """`params` (a recipe's parameters) with the stand-ins above, data written under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    run = LaptopRun(dict(params))
    run.substituted.extend(gpu_swaps(run.params))
    teacher = run.params.get("teacher_overrides") or {}
    local_teacher = run.params.get("teacher_provider") == "local"
    served = run.params.get("teacher_provider") == "vllm"  # its OpenAI API is the demo teacher's
    for name, value in STAND_INS.items():
        if not (local_teacher and name in ("teacher_provider", "teacher_model")) and not (
            served and name == "teacher_provider"
        ):
            _set(run, name, value)
    if local_teacher:
        _set(run, "teacher_model", str(_tiny_teacher_folder(folder)))
        change = {"on_length": "keep"}
        if (teacher.get("provider") or {}).get("adapter"):
            change["provider"] = {"adapter": str(tiny_teacher_adapter(folder))}
        _override(run, "teacher", change, "local teacher")
    if run.params.get("train_kd_teacher_source"):
        _set(run, "train_kd_teacher_source", TINY_TEACHER)
        if ((run.params.get("train_overrides") or {}).get("kd") or {}).get("teacher_adapter"):
            change = {"kd": {"teacher_adapter": str(tiny_teacher_adapter(folder))}}
            _override(run, "train", change, "KD teacher's adapter")
    _set(run, "teacher_dataset", str(_demo_dataset(run.params, teacher, folder)))
    if drop_mix(run.params):
        run.substituted.append("teacher_overrides: mix dropped (one generated dataset)")
    if _is_text(run.params):
        # The tiny tokenizer spends a token per UTF-8 byte: short chunks fit its max_length.
        small = {"text": {"chunk_chars": 120, "overlap_chars": 0}, "min_prompt_chars": 40}
        _override(run, "teacher", small, "the tiny tokenizer's byte tokens")
    # The demo teacher's reasoning and its echo of a long prompt count against max_tokens; the tiny local
    # teacher generates slowly, so it writes a few tokens only.
    # The tiny served teacher (top-k KD below) is slow too.
    _set(
        run, "teacher_max_tokens", 8 if local_teacher else 16 if run.params.get("train_kd") == "topk" else 96
    )
    if teacher.get("max_answer_chars"):
        # KFP parameters carry no null: the cap is lifted with a large one.
        _override(run, "teacher", {"max_answer_chars": 100_000}, "the demo teacher's echoed prompts")
    if (teacher.get("judge") or {}).get("enabled"):
        judge = {"name": "openai", "model": "demo-teacher", "api_key_env": "TEACHER_API_KEY"}
        _override(run, "teacher", {"judge": {"provider": judge}}, "judge")
    if run.params.get("train_kd") == "topk":
        # The demo teacher's log-probabilities are per word, no student token's: a tiny model with the
        # student's tokenizer answers instead, served as vLLM serves one (pipelines/model_teacher.py).
        run.served_model = _tiny_teacher_folder(folder)
        run.substituted.append(
            f"teacher: the tiny teacher served on loopback ({run.served_model}) for top-k KD"
        )
        # It never ends an answer, and some are whitespace alone: those are dropped, as an empty answer
        # has no logprobs and leaves the evaluation nothing to compare with.
        change = {"on_length": "keep", "min_answer_chars": 1}
        _override(run, "teacher", change, "the tiny untrained teacher")
    if run.params.get("eval_validation"):
        _set(run, "eval_validation", str(validation_file(folder / "val.json")))
    _shorten(run, folder, max_steps)
    return run


def point_judge_at(params: dict[str, Any], base_url: str) -> None:
    """The judge, when the run has one, asks the loopback teacher at `base_url` too."""
    teacher = params.get("teacher_overrides") or {}
    if (teacher.get("judge") or {}).get("enabled"):
        params["teacher_overrides"] = deep_merge(teacher, {"judge": {"provider": {"base_url": base_url}}})


def drop_mix(params: dict[str, Any]) -> bool:
    """Take the recipe's dataset mix out (its datasets are in the store): the stand-in dataset is read
    alone. True when there was one."""
    teacher = params.get("teacher_overrides") or {}
    if not teacher.get("mix"):
        return False
    params["teacher_overrides"] = {key: value for key, value in teacher.items() if key != "mix"}
    return True


def _set(run: LaptopRun, name: str, value: Any) -> None:
    before = run.params.get(name)
    if before != value:
        run.params[name] = value
        run.substituted.append(f"{name}: {before!r} -> {value!r}")


def _override(run: LaptopRun, stage: str, change: dict[str, Any], why: str) -> None:
    key = f"{stage}_overrides"
    run.params[key] = deep_merge(run.params.get(key) or {}, change)
    run.substituted.append(f"{key}: {json.dumps(change, ensure_ascii=False)} ({why})")


def _tiny_teacher_folder(folder: Path) -> Path:
    """The tiny teacher made once in a folder: a local teacher's model is a folder, not a source."""
    from components.common.tiny_model import make_tiny_model

    path = folder / "tiny-teacher"
    if not (path / "config.json").is_file():
        make_tiny_model(TINY_TEACHER, path)
    return path


def tiny_teacher_adapter(folder: Path) -> Path:
    """A LoRA adapter on the tiny teacher, made once in `folder`, whose B matrices are not zero, so it
    changes the teacher: the stand-in for a recipe's base + adapter teacher."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    path = folder / "tiny-teacher-adapter"
    if not (path / "adapter_config.json").is_file():
        base = AutoModelForCausalLM.from_pretrained(_tiny_teacher_folder(folder))
        torch.manual_seed(0)
        get_peft_model(base, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False)).save_pretrained(path)
    return path


def _is_text(params: dict[str, Any]) -> bool:
    teacher = params.get("teacher_overrides") or {}
    return "text" in (params.get("teacher_dataset_format"), teacher.get("dataset_format"))


def _demo_dataset(params: dict[str, Any], teacher: dict[str, Any], folder: Path) -> Path:
    """The demo task's prompts in the format the recipe reads."""
    fmt = params.get("teacher_dataset_format") or teacher.get("dataset_format")
    if _is_text(params):
        (folder / "raw").mkdir(exist_ok=True)
        (folder / "raw" / "data.txt").write_text(DEMO_TEXT, encoding="utf-8")
        return folder / "raw"
    words = demo_words(24, seed=0)
    if fmt == "messages":
        rows = [_messages(word) for word in words]
    elif teacher.get("fields"):
        # Rows that are conversations already are read as they stand under a fields mapping.
        rows = [
            {
                "conversations": [
                    {
                        "from": m["role"].replace("user", "human").replace("assistant", "gpt"),
                        "value": m["content"],
                    }
                    for m in _messages(word)["messages"]
                ]
            }
            for word in words
        ]
    else:
        return write_demo_dataset(folder / "prompts.jsonl", len(words))
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _messages(word: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": f"Reverse the letters of: {word}"},
            {"role": "assistant", "content": word[::-1]},
        ]
    }


def _teacher_data(folder: Path, seed: int) -> Path:
    """A teacher-data folder (train.jsonl, test.jsonl) of the demo task's answers."""
    folder.mkdir(parents=True, exist_ok=True)
    teacher = {"provider": "demo", "model": "demo-teacher"}
    for split, words in (("train", demo_words(16, seed)), ("test", demo_words(2, seed + 100))):
        records = []
        for word in words:
            prompt = [{"role": "user", "content": f"Reverse the letters of: {word}"}]
            messages = [*prompt, {"role": "assistant", "content": word[::-1]}]
            records.append(
                Record(id=record_id(prompt, teacher), messages=messages, teacher=teacher, split=split)
            )
        write_records(folder / f"{split}.jsonl", records)
    return folder


def validation_file(path: Path, count: int = 3) -> Path:
    """A validation file of the demo task in the seed's shape (a JSON list of alpaca rows with gold
    answers), of words the teacher data does not hold."""
    rows = [
        {"instruction": f"Reverse the letters of: {w}", "output": w[::-1]} for w in demo_words(count, 300)
    ]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def gpu_swaps(params: dict[str, Any]) -> list[str]:
    """Swap in `params` (a run's parameters) what needs a GPU and nothing else: GPU counts to 0,
    flash-attn to sdpa, fp16 to bf16 where there is no CUDA; a vLLM teacher is served by the demo teacher.
    One line per swap."""
    import torch

    swaps = []
    for name in sorted(params):
        if name.endswith("_gpus") and params[name]:
            swaps.append(f"{name}: {params[name]} -> 0 (no GPU)")
            params[name] = 0
    for stage in ("train", "eval"):
        overrides = params.get(f"{stage}_overrides") or {}
        if overrides.get("attention") == "flash_attention_2":
            params[f"{stage}_overrides"] = {**overrides, "attention": "sdpa"}
            swaps.append(f"{stage}.attention: flash_attention_2 -> sdpa (flash-attn needs a GPU)")
    train = params.get("train_overrides") or {}
    if train.get("precision") == "fp16" and not torch.cuda.is_available():
        params["train_overrides"] = {**train, "precision": "bf16"}
        swaps.append("train.precision: fp16 -> bf16 (accelerate autocasts fp16 only on a GPU)")
    provider = (params.get("teacher_overrides") or {}).get("provider") or {}
    if "vllm" in (params.get("teacher_provider"), provider.get("name")):
        swaps.append("teacher: the vLLM server -> the loopback demo teacher (its OpenAI API)")
    return swaps


def _shorten(run: LaptopRun, folder: Path, max_steps: int) -> None:
    train = run.params.get("train_overrides") or {}
    _set(run, "train_max_steps", max_steps)
    change: dict[str, Any] = {}
    if train.get("datasets"):
        change["datasets"] = {
            name: str(_teacher_data(folder / f"dataset-{name}", seed))
            for seed, name in enumerate(sorted(train["datasets"]), start=1)
        }
    if train.get("curriculum"):
        change["curriculum"] = [{**phase, "max_steps": 2} for phase in train["curriculum"]]
        change["eval_steps"] = min(train.get("eval_steps") or 0, 2)
        change["eval_samples"], change["sample_count"], change["max_length"] = 2, 1, 64
    if train.get("gradient_accumulation_steps", 1) > 2:
        change["gradient_accumulation_steps"] = 2
    if change:
        _override(run, "train", change, "small")
