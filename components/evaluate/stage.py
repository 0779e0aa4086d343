"""Eval stage: what distillation bought, as numbers, a report and a gate.

    python -m components.evaluate --config eval.yaml

Order of work:
    1. read the test split (prompts, teacher answers, references) from data_dir/test.jsonl
    2. for the untrained and the distilled student (one model in memory at a time): batched generation,
       text metrics against the teacher's answers, accuracy, perplexity on the teacher's answers, speed, size
    3. the teacher's own row from the stored records (+ speed and size when it is a local model)
       and, with benchmarks.tasks, lm-eval benchmarks on each model while it is loaded (benchmarks.py)
    4. optional LLM-as-judge win rate, the loss curve from TensorBoard
    5. eval.json + report.html, then the gates: below `min_score`, or a benchmark lost beyond its
       `max_regression`, the stage fails, saying by how much
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
from components.common.devices import resolve_device
from components.common.errors import ConfigError, InputError
from components.common.records import Record, read_records
from components.common.redact import redact_config
from components.evaluate.benchmarks import (
    BenchmarkPlan,
    benchmark_metrics,
    benchmark_table,
    check_forgetting,
    run_benchmarks,
)
from components.evaluate.config import Config
from components.evaluate.curves import divergence_note, loss_svg, read_loss_curves
from components.evaluate.metrics import accuracy, exact_match, text_metrics
from components.evaluate.report import render_report
from components.evaluate.sampling import (
    Generation,
    answer_perplexity,
    generate,
    load_model,
    size_on_disk,
    split_reasoning,
)
from components.evaluate.validation import validation_records
from components.evaluate.vllm_sampling import use_vllm, vllm_generate

log = logging.getLogger(__name__)


class EvalGateError(InputError):
    """The gated metric is below `min_score`, or a benchmark regressed beyond `max_regression`: the model
    must not be promoted."""


@dataclass
class Result:
    metrics: dict[str, float]  # flat name -> value, for KFP Metrics
    report_path: str
    eval_path: str
    gate_passed: bool | None  # None when no min_score is set
    forgetting_passed: bool | None  # None when no benchmark task is gated


def run(config: Config) -> Result:
    test = HeldOut.load(config)
    checker = load_checker(config.checker)
    plan = BenchmarkPlan.from_config(config.benchmarks) if config.benchmarks.tasks else None
    device = resolve_device(config.device)
    for path in (config.student_dir, config.trained_dir, config.teacher_dir):
        if path:
            use_vllm(config.engine, device, path)  # an engine that cannot run fails before any model loads
    source = config.validation or config.data_dir
    log.info("eval: %d test records from %s on %s", len(test.records), source, device)

    metrics: dict[str, float] = {"num_samples": float(len(test.records))}
    outputs: dict[str, Generation] = {}
    benchmarked: dict[str, dict] = {}
    for system, path, field in (
        ("untrained", config.student_dir, "student_dir"),
        ("distilled", config.trained_dir, "trained_dir"),
    ):
        outputs[system], scores, benchmarked[system] = score_student(
            config, test, checker, device, path, field, plan
        )
        metrics.update({f"{system}_{name}": value for name, value in scores.items()})
    teacher_scores, teacher_benchmarks = teacher_metrics(config, test, checker, device, plan)
    metrics.update(teacher_scores)
    if teacher_benchmarks:
        benchmarked["teacher"] = teacher_benchmarks
    benchmark_rows = benchmark_table(benchmarked) if plan else []
    metrics.update(benchmark_metrics(benchmark_rows))
    forgetting = check_forgetting(benchmark_rows, config.benchmarks.max_regression)
    answers = {system: generation.answers for system, generation in outputs.items()}
    metrics.update(
        reference_metrics({**answers, "teacher": test.teacher}, test.references, config.zh_tokenizer)
    )
    verdicts: list[str] = []
    if config.judge is not None:
        from components.evaluate.judge import judge_win_rate

        judged, verdicts = judge_win_rate(
            config.judge, test.questions, outputs["distilled"].answers, test.teacher
        )
        metrics.update(judged)
    curves, curve_note = loss_curves(config.tensorboard_dir)
    gate = check_gate(config, metrics)

    samples = side_by_side(test, outputs, verdicts)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    eval_path, report_path = output_dir / "eval.json", output_dir / "report.html"
    everything = {
        "metrics": metrics,
        "gate": gate,
        "benchmarks": benchmark_rows,
        "forgetting_gate": forgetting,
        "config": redact_config(to_dict(config)),
        "loss_curves": curves,
        "samples": samples,
    }
    eval_path.write_text(json.dumps(everything, indent=2, ensure_ascii=False) + "\n")
    report = render_report(
        title="Distillation report",
        facts=report_facts(config, test),
        metrics=metrics,
        gate=gate,
        benchmarks=benchmark_rows,
        forgetting=forgetting,
        curve_svg=loss_svg(curves),
        curve_note=curve_note,
        samples=samples[: config.report_samples],
        total_samples=len(test.records),
    )
    report_path.write_text(report)
    failed = [g["message"] for g in (gate, forgetting) if g["passed"] is False]
    if failed:
        raise EvalGateError("; ".join(failed) + f" (report: {report_path})")
    return Result(
        metrics=metrics,
        report_path=str(report_path),
        eval_path=str(eval_path),
        gate_passed=gate["passed"],
        forgetting_passed=forgetting["passed"],
    )


@dataclass
class HeldOut:
    """The test records and the views of them every step needs."""

    records: list[Record]
    prompts: list[list[dict[str, str]]]  # chat messages before the teacher's answer
    questions: list[str]  # the last user message: what checkers, the judge and the report show
    teacher: list[str]  # the teacher's final answers (reasoning removed): the students' target
    references: list[str | None]

    @classmethod
    def load(cls, config: Config) -> HeldOut:
        if config.validation:
            records = validation_records(config.validation)[: config.max_samples or None]
        else:
            records = load_test_records(Path(config.data_dir), config.max_samples)
        return cls(
            records=records,
            prompts=[r.prompt_messages for r in records],
            questions=[last_user_message(r) for r in records],
            teacher=[split_reasoning(r.answer)[1] for r in records],
            references=[r.reference for r in records],
        )


def score_student(
    config, test: HeldOut, checker, device, path: str, field: str, plan: BenchmarkPlan | None
) -> tuple[Generation, dict, dict]:
    """Generate with one student, score it against the teacher and run the benchmarks on it (empty
    without a plan); the model is freed afterwards. A quantized student is scored as bitsandbytes loads
    it, so it never goes through vLLM."""
    quantization = config.quantization if field == "trained_dir" else "none"
    vllm = quantization == "none" and use_vllm(config.engine, device, path)
    generation = vllm_generate(path, test.prompts, config) if vllm else None
    model, tokenizer = load_model(
        path,
        config.dtype,
        device,
        field,
        base_dir=config.student_dir,
        quantization=quantization,
        remote_code=config.trust_remote_code,
    )
    generation = generation or generate(model, tokenizer, test.prompts, config)
    count = len(test.records)
    scores = text_metrics(generation.answers, test.teacher, config.zh_tokenizer)
    scores["accuracy"] = accuracy(generation.answers, test.questions, test.references, checker)
    scores["perplexity"] = answer_perplexity(model, tokenizer, test.prompts, test.teacher, config.batch_size)
    scores["avg_output_chars"] = sum(map(len, generation.answers)) / count
    scores["avg_output_tokens"] = generation.new_tokens / count
    scores["tokens_per_s"] = generation.tokens_per_s
    scores["params"] = float(sum(p.numel() for p in model.parameters()))
    scores["size_bytes"] = float(size_on_disk(path, base_dir=config.student_dir))
    log.info(
        "eval: %s %s: exact match %.3f, rouge_l %.3f", field, path, scores["exact_match"], scores["rouge_l"]
    )
    benchmarks = run_benchmarks(model, tokenizer, plan, config.benchmarks, config.seed) if plan else {}
    del model
    free_memory()
    return generation, {name: value for name, value in scores.items() if value is not None}, benchmarks


def loss_curves(tensorboard_dir: str | None) -> tuple[dict, str]:
    """(curves, note for the report: why there are none, or where training diverged). The curve
    illustrates the report: logs that cannot be read are noted there, not fatal to the evaluation."""
    if not tensorboard_dir:
        return {}, "no tensorboard_dir was given"
    try:
        curves = read_loss_curves(tensorboard_dir)
    except InputError as error:
        log.warning("eval: no loss curve: %s", error)
        return {}, str(error)
    if not curves:
        return curves, f"no loss scalars in the TensorBoard events under {tensorboard_dir}"
    note = divergence_note(curves)
    if note:
        log.warning("eval: %s", note)
    return curves, note


def side_by_side(test: HeldOut, outputs: dict[str, Generation], verdicts: list[str]) -> list[dict[str, Any]]:
    """One entry per test record: prompt, reference, teacher, each student's answer and raw output."""
    samples = []
    for i, (record, question, answer) in enumerate(
        zip(test.records, test.questions, test.teacher, strict=True)
    ):
        sample = {"id": record.id, "prompt": question, "reference": record.reference, "teacher": answer}
        for system, generation in outputs.items():
            sample[system] = generation.answers[i]
            sample[f"{system}_raw"] = generation.raw[i]
            sample[f"{system}_match"] = exact_match(generation.answers[i], answer)
        sample["judge"] = verdicts[i] if i < len(verdicts) else None
        samples.append(sample)
    return samples


def report_facts(config: Config, test: HeldOut) -> dict[str, str]:
    teachers = sorted(
        {f"{r.teacher.get('provider', '?')}/{r.teacher.get('model', '?')}" for r in test.records if r.teacher}
    )
    return {
        "distilled": config.trained_dir,
        "untrained": config.student_dir,
        "teacher": ", ".join(teachers) or "unknown",
        "test prompts": str(len(test.records)),
        "decoding": "sampling" if config.do_sample else "greedy",
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


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


def load_checker(spec: str | None) -> Callable[[str, str, str | None], bool | None] | None:
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
    config: Config, test: HeldOut, checker, device, plan: BenchmarkPlan | None
) -> tuple[dict[str, float], dict]:
    """The teacher's row: accuracy and length of its stored answers; speed, size and benchmarks when it is
    local (no benchmarks otherwise)."""
    scores: dict[str, float | None] = {
        "accuracy": accuracy(test.teacher, test.questions, test.references, checker),
        "avg_output_chars": sum(map(len, test.teacher)) / len(test.teacher),
    }
    completion = [r.usage.get("completion_tokens") for r in test.records]
    if all(isinstance(c, int) for c in completion):
        scores["avg_output_tokens"] = sum(completion) / len(completion)
    benchmarks = {}
    if config.teacher_dir:
        path = config.teacher_dir
        generation = (
            vllm_generate(path, test.prompts, config) if use_vllm(config.engine, device, path) else None
        )
        model, tokenizer = load_model(path, config.dtype, device, "teacher_dir")
        generation = generation or generate(model, tokenizer, test.prompts, config)
        scores["tokens_per_s"] = generation.tokens_per_s
        scores["params"] = float(sum(p.numel() for p in model.parameters()))
        scores["size_bytes"] = float(size_on_disk(config.teacher_dir))
        if plan:
            benchmarks = run_benchmarks(model, tokenizer, plan, config.benchmarks, config.seed)
        del model
        free_memory()
    return {f"teacher_{k}": v for k, v in scores.items() if v is not None}, benchmarks


def reference_metrics(
    answers: dict[str, list[str]], references: list[str | None], zh_tokenizer: str
) -> dict[str, float]:
    """`<system>_ref_<metric>`: every system, the teacher included, against the dataset's gold answers,
    over the records that have one (none: no such metrics)."""
    scored = [i for i, reference in enumerate(references) if reference is not None]
    if not scored:
        return {}
    gold = [references[i] for i in scored]
    metrics = {"num_reference_samples": float(len(scored))}
    for system, texts in answers.items():
        values = text_metrics([texts[i] for i in scored], gold, zh_tokenizer)
        metrics.update({f"{system}_ref_{name}": value for name, value in values.items()})
    return metrics


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
