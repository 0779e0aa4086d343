"""Eval stage: what distillation bought, as numbers, a report and a gate.

    python -m components.evaluate --config eval.yaml

Order of work:
    1. read the test split (prompts, teacher answers, references) from data_dir/test.jsonl
    2. for the untrained and the distilled student (one model in memory at a time): batched generation,
       text metrics against the teacher's answers, accuracy, perplexity on the teacher's answers, speed, size
    3. the teacher's own row from the stored records (+ speed and size when it is a local model)
    4. optional LLM-as-judge win rate, the loss curve from TensorBoard
    5. eval.json + report.html, then the gate: below `min_score` the stage fails, saying by how much
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from components.common.config import to_dict
from components.common.errors import ConfigError, InputError
from components.common.records import Record, read_records
from components.evaluate.config import Config
from components.evaluate.curves import loss_svg, read_loss_curves
from components.evaluate.generate import (
    Generation,
    answer_perplexity,
    generate,
    load_model,
    resolve_device,
    size_on_disk,
    split_reasoning,
)
from components.evaluate.metrics import accuracy, exact_match, text_metrics
from components.evaluate.report import render_report

log = logging.getLogger(__name__)


class EvalGateError(InputError):
    """The gated metric is below `min_score`: the model must not be promoted."""


@dataclass
class Result:
    metrics: dict[str, float]  # flat name -> value, for KFP Metrics
    report_path: str
    eval_path: str
    gate_passed: bool | None  # None when no min_score is set


def run(config: Config) -> Result:
    records = load_test_records(Path(config.data_dir), config.max_samples)
    prompts = [r.prompt_messages for r in records]
    questions = [last_user_message(r) for r in records]
    teacher = [split_reasoning(r.answer)[1] for r in records]
    references = [r.reference for r in records]
    checker = load_checker(config.checker)
    device = resolve_device(config.device)
    log.info("eval: %d test records from %s on %s", len(records), config.data_dir, device)

    metrics: dict[str, float] = {"num_samples": float(len(records))}
    outputs: dict[str, Generation] = {}
    for system, path, field in (
        ("untrained", config.base_model_dir, "base_model_dir"),
        ("distilled", config.model_dir, "model_dir"),
    ):
        model, tokenizer = load_model(path, config.dtype, device, field, base_dir=config.base_model_dir)
        outputs[system] = generation = generate(model, tokenizer, prompts, config)
        scores = text_metrics(generation.answers, teacher, config.zh_tokenizer)
        scores["accuracy"] = accuracy(generation.answers, questions, references, checker)
        scores["perplexity"] = answer_perplexity(model, tokenizer, prompts, teacher, config.batch_size)
        scores["avg_output_chars"] = sum(map(len, generation.answers)) / len(records)
        scores["avg_output_tokens"] = generation.new_tokens / len(records)
        scores["tokens_per_s"] = generation.tokens_per_s
        scores["params"] = float(sum(p.numel() for p in model.parameters()))
        scores["size_bytes"] = float(size_on_disk(path, base_dir=config.base_model_dir))
        metrics.update({f"{system}_{k}": v for k, v in scores.items() if v is not None})
        log.info("eval: %s exact match %.3f, rouge_l %.3f", system, scores["exact_match"], scores["rouge_l"])
        del model
        free_memory()

    verdicts: list[str] = []
    metrics.update(teacher_metrics(config, records, prompts, questions, teacher, references, checker, device))
    if config.judge is not None:
        from components.evaluate.judge import judge_win_rate

        judged, verdicts = judge_win_rate(config.judge, questions, outputs["distilled"].answers, teacher)
        metrics.update(judged)
    curves, curve_note = {}, "no tensorboard_dir was given"
    if config.tensorboard_dir:
        # The curve illustrates the report; logs that cannot be read are noted there, not fatal.
        try:
            curves = read_loss_curves(config.tensorboard_dir)
            curve_note = (
                "" if curves else f"no loss scalars in the TensorBoard events under {config.tensorboard_dir}"
            )
        except InputError as error:
            log.warning("eval: no loss curve: %s", error)
            curve_note = str(error)
    gate = check_gate(config, metrics)

    samples = [
        {
            "id": record.id,
            "prompt": question,
            "reference": record.reference,
            "teacher": answer,
            **{system: outputs[system].answers[i] for system in outputs},
            **{f"{system}_raw": outputs[system].raw[i] for system in outputs},
            **{f"{system}_match": exact_match(outputs[system].answers[i], answer) for system in outputs},
            "judge": verdicts[i] if i < len(verdicts) else None,
        }
        for i, (record, question, answer) in enumerate(zip(records, questions, teacher, strict=True))
    ]
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    eval_path, report_path = output_dir / "eval.json", output_dir / "report.html"
    everything = {
        "metrics": metrics,
        "gate": gate,
        "config": to_dict(config),
        "loss_curves": curves,
        "samples": samples,
    }
    eval_path.write_text(json.dumps(everything, indent=2, ensure_ascii=False) + "\n")
    facts = {
        "distilled": config.model_dir,
        "untrained": config.base_model_dir,
        "test prompts": str(len(records)),
        "decoding": "sampling" if config.do_sample else "greedy",
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    report_path.write_text(
        render_report(
            title="Distillation report",
            facts=facts,
            metrics=metrics,
            gate=gate,
            curve_svg=loss_svg(curves),
            curve_note=curve_note,
            samples=samples[: config.report_samples],
            total_samples=len(records),
        )
    )
    if gate["passed"] is False:
        raise EvalGateError(gate["message"] + f" (report: {report_path})")
    return Result(
        metrics=metrics, report_path=str(report_path), eval_path=str(eval_path), gate_passed=gate["passed"]
    )


def load_test_records(data_dir: Path, max_samples: int | None) -> list[Record]:
    path = data_dir / "test.jsonl"
    if not path.is_file():
        raise InputError(f"data_dir: {path} does not exist; give the teacher stage's dataset folder")
    records = [r for r in read_records(path) if r.answer]
    if not records:
        raise InputError(
            f"{path}: no record has a teacher answer (a final assistant message) to compare with"
        )
    return records[:max_samples] if max_samples else records


def last_user_message(record: Record) -> str:
    return next((m["content"] for m in reversed(record.prompt_messages) if m["role"] == "user"), "")


def load_checker(spec: str | None) -> Callable[[str, str], bool] | None:
    if spec is None:
        return None
    module_name, _, function_name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(
            f"checker: cannot import {spec!r} ({error}); give 'package.module:function'"
        ) from None
    if not callable(function):
        raise ConfigError(f"checker: {spec!r} is not a function")
    return function


def teacher_metrics(
    config, records, prompts, questions, teacher, references, checker, device
) -> dict[str, float]:
    """The teacher's row: accuracy and length of its stored answers; speed and size when it is local."""
    scores: dict[str, float | None] = {
        "accuracy": accuracy(teacher, questions, references, checker),
        "avg_output_chars": sum(map(len, teacher)) / len(teacher),
    }
    completion = [r.usage.get("completion_tokens") for r in records]
    if all(isinstance(c, int) for c in completion):
        scores["avg_output_tokens"] = sum(completion) / len(completion)
    if config.teacher_model_dir:
        model, tokenizer = load_model(config.teacher_model_dir, config.dtype, device, "teacher_model_dir")
        generation = generate(model, tokenizer, prompts, config)
        scores["tokens_per_s"] = generation.tokens_per_s
        scores["params"] = float(sum(p.numel() for p in model.parameters()))
        scores["size_bytes"] = float(size_on_disk(config.teacher_model_dir))
        del model
        free_memory()
    return {f"teacher_{k}": v for k, v in scores.items() if v is not None}


def check_gate(config: Config, metrics: dict[str, float]) -> dict[str, Any]:
    """{metric, value, min_score, passed, message}; passed is None when no min_score is set."""
    gate: dict[str, Any] = {"metric": config.gate_metric, "min_score": config.min_score, "passed": None}
    if config.min_score is None:
        gate["message"] = "gate off (min_score not set)"
        return gate
    value = metrics.get(config.gate_metric)
    if value is None:
        available = ", ".join(sorted(metrics))
        raise ConfigError(
            f"gate_metric: {config.gate_metric!r} was not computed in this run; available: {available}"
        )
    gate["value"] = value
    gate["passed"] = value >= config.min_score
    if gate["passed"]:
        gate["message"] = (
            f"eval gate passed: {config.gate_metric} = {value:.4f} ≥ min_score {config.min_score:.4f}"
        )
    else:
        gate["message"] = (
            f"eval gate failed: {config.gate_metric} = {value:.4f} is below min_score {config.min_score:.4f} "
            f"by {config.min_score - value:.4f}"
        )
    return gate


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
