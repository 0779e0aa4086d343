"""Benchmarks: EleutherAI lm-evaluation-harness on each model the eval stage loads, and the forgetting gate.

    benchmarks:
      tasks: [mmlu, gsm8k]        # hub names, shipped tasks (demo_reverse) or paths of task YAML files
      limit: 100
      max_regression: {mmlu: 2}   # points the distilled student may lose against the untrained one

lm-eval runs on the model the stage already holds in memory (HFLM wraps it), so each model is loaded once
for generation, perplexity and benchmarks. lm-eval scores acc and exact_match from 0 to 1; the gate and
the report speak in points:

    change (points)     = 100 × (distilled - untrained)
    regression (points) = -change, checked against max_regression[task] on every metric of the task that
                          lm-eval marks higher-is-better

Local task files (from the bucket or a run parameter) may hold data paths and templates only, never code:
they are read as plain YAML (no `!function` or other tags, no aliases); an `include` must name a .yaml
file in the task's own folder, read by the same rules; `class`, `hf_evaluate` and metric names that
are paths (`/`, `.py`: evaluate.load would import them) are refused; a task path must end in .yaml (lm-eval
would load any other file itself, honouring `!function`). lm-eval renders every template (doc_to_text,
doc_to_target, ...) in a sandboxed, immutable Jinja environment while it runs here, so a template reaches
the document's fields and nothing of Python's.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.common.errors import ConfigError, InputError
from components.common.plain_yaml import load_plain_yaml
from components.evaluate.config import BenchmarkConfig

log = logging.getLogger(__name__)

SHIPPED_TASKS = Path(__file__).parent / "tasks"


@dataclass
class BenchmarkPlan:
    """The tasks to run: `specs` as lm-eval's simple_evaluate takes them, `names` as its results name them."""

    names: list[str]
    specs: list[str | dict[str, Any]]
    # lm-eval's index of its own tasks, built once per stage run (it reads every task file it ships).
    _task_manager: Any = field(default=None, repr=False)

    def task_manager(self):
        if self._task_manager is None:
            from lm_eval.tasks import TaskManager

            self._task_manager = TaskManager()
        return self._task_manager

    @classmethod
    def from_config(cls, config: BenchmarkConfig) -> BenchmarkPlan:
        """Reads local task files and checks max_regression names tasks that run, before any model loads."""
        specs: list[str | dict[str, Any]] = []
        names = []
        for task in config.tasks:
            path = local_task_path(task)
            spec = load_local_task(path) if path else task
            specs.append(spec)
            names.append(spec["task"] if isinstance(spec, dict) else task)
        unknown = sorted(set(config.max_regression) - set(names))
        if unknown:
            raise ConfigError(
                f"benchmarks.max_regression.{unknown[0]}: no such task runs; the tasks are {', '.join(names)}"
            )
        return cls(names=names, specs=specs)


def local_task_path(task: str) -> Path | None:
    """The task file of a path ending in .yaml, or of a shipped task's name; None for an lm-eval name."""
    if task.endswith((".yaml", ".yml")):
        path = Path(task)
        if not path.is_file():
            raise ConfigError(
                f"benchmarks.tasks: {task} does not exist; give a task YAML file or a task name"
            )
        return path
    shipped = SHIPPED_TASKS / f"{task}.yaml"
    if shipped.is_file():
        return shipped
    if Path(task).is_file():
        raise ConfigError(
            f"benchmarks.tasks: {task} is a file but not a .yaml task file; name local tasks by their .yaml "
            "path (lm-eval would load any other file itself, importing the Python it names)"
        )
    return None


def load_local_task(path: Path) -> dict[str, Any]:
    """A task file as lm-eval's task config, its includes merged in, checked to hold no code, and its data
    folder (`dataset_kwargs.data_dir`) made absolute against the file's folder, so that data files
    beside the task file are found from any directory."""
    config = read_task_file(path, path.parent.resolve(), seen=set())
    if not isinstance(config.get("task"), str):
        raise ConfigError(f"benchmarks.tasks: {path} must be a mapping with a `task` name")
    check_task_holds_no_code(config, path)
    kwargs = dict(config.get("dataset_kwargs") or {})
    data_dir = Path(kwargs.get("data_dir") or ".")
    kwargs["data_dir"] = str(data_dir if data_dir.is_absolute() else (path.parent / data_dir).resolve())
    config["dataset_kwargs"] = kwargs
    return config


def read_task_file(path: Path, folder: Path, seen: set[Path]) -> dict[str, Any]:
    """One task file as plain YAML with its `include`s (files of `folder` only) merged under its keys, as
    lm-eval's loader merges them."""
    try:
        config = load_plain_yaml(path.read_text(), f"benchmarks.tasks: {path}")
    except yaml.YAMLError as error:
        raise ConfigError(
            f"benchmarks.tasks: {path} is not plain YAML ({str(error).splitlines()[0]}); local task files "
            f"may not use !function or other tags"
        ) from None
    if not isinstance(config, dict):
        raise ConfigError(f"benchmarks.tasks: {path} must be a mapping with a `task` name")
    includes = config.pop("include", None)
    if includes is None:
        return config
    merged: dict[str, Any] = {}
    for include in includes if isinstance(includes, list) else [includes]:
        included = (path.parent / str(include)).resolve()
        if folder not in included.parents or included.suffix not in (".yaml", ".yml"):
            raise ConfigError(
                f"benchmarks.tasks: {path} includes {include}, which is not a .yaml file in the task's "
                f"folder {folder}; copy what it needs into that folder"
            )
        if included in seen:
            raise ConfigError(f"benchmarks.tasks: {path} includes {include} again (an include cycle)")
        if not included.is_file():
            raise ConfigError(f"benchmarks.tasks: {path} includes {include}, which does not exist")
        merged.update(read_task_file(included, folder, seen | {included}))
    merged.pop("task_list", None)
    return {**merged, **config}


def check_task_holds_no_code(config: dict[str, Any], path: Path) -> None:
    """Refuse what makes lm-eval import or run Python: a task class, and metrics loaded through
    Hugging Face `evaluate` (hf_evaluate, or a metric named by a path or a .py file)."""
    if "class" in config:
        raise ConfigError(f"benchmarks.tasks: {path} sets class; a local task is YAML only, no Python class")
    metrics = config.get("metric_list") or []
    if not isinstance(metrics, list):
        raise ConfigError(f"benchmarks.tasks: {path} metric_list must be a list of {{metric: name}}")
    for i, entry in enumerate(metrics):
        name = entry.get("metric") if isinstance(entry, dict) else None
        where = f"benchmarks.tasks: {path} metric_list[{i}]"
        if not isinstance(name, str) or "/" in name or "\\" in name or ".py" in name:
            raise ConfigError(
                f"{where}: metric {name!r} must be the name of one of lm-eval's metrics (exact_match, acc, "
                "...), not a path or a Python file"
            )
        if "hf_evaluate" in entry:
            raise ConfigError(
                f"{where}: hf_evaluate loads metric code from outside lm-eval; use lm-eval's own metrics"
            )


@contextlib.contextmanager
def sandboxed_templates() -> Iterator[None]:
    """lm-eval renders every task template through the module-level Jinja environment `lm_eval.utils.env`
    (utils.apply_template); for the duration, that environment is an immutable sandbox with the same
    settings and filters, and a template that reaches for Python internals fails with one line."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from lm_eval import utils

    original = utils.env
    sandbox = ImmutableSandboxedEnvironment(
        loader=jinja2.BaseLoader(), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    sandbox.filters.update(original.filters)
    utils.env = sandbox
    try:
        yield
    except jinja2.exceptions.SecurityError as error:
        raise InputError(
            f"benchmarks: a task template was refused by the sandbox ({error}); task templates may use "
            "the document's fields and plain filters only"
        ) from None
    finally:
        utils.env = original


def run_benchmarks(model, tokenizer, plan: BenchmarkPlan, config: BenchmarkConfig, seed: int) -> dict:
    """lm-eval's results for one model: {task: {metric: score}}, plus the few-shot count and documents."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=config.batch_size,
        think_end_token=config.think_end_token,
    )
    with sandboxed_templates():
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=plan.specs,
            num_fewshot=config.num_fewshot,
            limit=config.limit,
            apply_chat_template=config.apply_chat_template,
            fewshot_as_multiturn=config.apply_chat_template,
            log_samples=False,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            task_manager=plan.task_manager(),
        )
    if results is None:
        raise InputError("benchmarks: lm-eval returned no results")
    return task_scores(results, plan.names)


def task_scores(results: dict[str, Any], names: list[str]) -> dict[str, dict[str, Any]]:
    """{task: {"scores": {metric: value}, "higher_is_better": {metric: bool}, "num_fewshot", "samples"}}
    for the requested tasks (a group's own aggregate row, not its subtasks). lm-eval names a metric
    `<metric>,<filter>`; the filter "none" is dropped: `acc`, `exact_match,strict-match`."""
    found = {}
    for name in names:
        row = results["results"].get(name)
        if row is None:
            raise InputError(f"benchmarks: lm-eval returned no result for task {name}")
        better = results.get("higher_is_better", {}).get(name, {})
        scores, higher = {}, {}
        for key, value in row.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            label = metric if filter_name == "none" else key
            scores[label] = float(value)
            higher[label] = bool(better.get(metric, True))
        samples = results.get("n-samples", {}).get(name, {})
        found[name] = {
            "scores": scores,
            "higher_is_better": higher,
            "num_fewshot": results.get("n-shot", {}).get(name),
            "samples": samples.get("effective") if isinstance(samples, dict) else None,
        }
    return found


def benchmark_table(by_system: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (task, metric): each system's score, the change in points, higher-is-better."""
    rows = []
    untrained = by_system.get("untrained", {})
    for task, result in by_system.get("distilled", {}).items():
        for metric, value in result["scores"].items():
            row = {
                "task": task,
                "metric": metric,
                "higher_is_better": result["higher_is_better"][metric],
                "num_fewshot": result["num_fewshot"],
                "samples": result["samples"],
            }
            for system, tasks in by_system.items():
                row[system] = tasks.get(task, {}).get("scores", {}).get(metric)
            before = untrained.get(task, {}).get("scores", {}).get(metric)
            row["change_points"] = None if before is None else 100 * (value - before)
            rows.append(row)
    return rows


def check_forgetting(rows: list[dict[str, Any]], max_regression: dict[str, float]) -> dict[str, Any]:
    """{passed, message, failures}: passed is None when no task is gated. A gated task fails on any
    higher-is-better metric where the distilled student lost more than max_regression[task] points."""
    if not max_regression:
        return {"passed": None, "message": "forgetting gate off (max_regression not set)", "failures": []}
    failures, checked = [], []
    for row in rows:
        limit = max_regression.get(row["task"])
        if limit is None or not row["higher_is_better"] or row["change_points"] is None:
            continue
        lost = -row["change_points"]
        checked.append(f"{row['task']} {row['metric']} {row['change_points']:+.1f}")
        if lost > limit + 1e-9:
            failures.append(
                f"{row['task']} {row['metric']}: the distilled student scores {100 * row['distilled']:.1f} "
                f"against the untrained {100 * row['untrained']:.1f}, {lost:.1f} points lost, more than "
                f"max_regression {limit:g} by {lost - limit:.1f}"
            )
    if failures:
        return {
            "passed": False,
            "message": "forgetting gate failed: " + "; ".join(failures),
            "failures": failures,
        }
    return {
        "passed": True,
        "message": "forgetting gate passed: " + ", ".join(checked) + " points, within max_regression",
        "failures": [],
    }


def benchmark_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Flat KFP metric names: `<system>_bench_<task>_<metric>` (0-1) and `bench_<task>_<metric>_change`
    (points), with characters other than letters, digits and _ made _."""
    metrics = {}
    for row in rows:
        key = metric_key(f"{row['task']}_{row['metric']}")
        for system in ("untrained", "distilled", "teacher"):
            if row.get(system) is not None:
                metrics[f"{system}_bench_{key}"] = row[system]
        if row["change_points"] is not None:
            metrics[f"bench_{key}_change"] = row["change_points"]
    return metrics


def metric_key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")
