"""Run the whole pipeline on this machine through kfp.local, on the embedded demo defaults.

    make demo                                   # = python -m pipelines.run_local
    python -m pipelines.run_local --workdir .demo --store-uri s3://distill/demo   # store on S3
    python -m pipelines.run_local --config pipelines/recipes/three_phase_kd.yaml  # a recipe, on stand-ins

What runs: the KFP local SubprocessRunner executes every component in a subprocess of this Python, as
the cluster would run them in their images. The demo student is a tiny Qwen2 made on the spot; the
teacher is an OpenAI-compatible server started here on loopback (pipelines/demo_teacher.py), reached
through the `openai` SDK exactly like DeepSeek or DashScope; the task is reversing 3–6 letter words.
Point `--teacher-base-url`, `--teacher-model` and TEACHER_API_KEY at a real API to use a real teacher.
With `--config`, a run file (a recipe) runs with the stand-ins the recipe tests use (tiny models, the demo
teacher, no GPU, generated data, a few steps: pipelines/recipe_stand_ins.py), each substitution printed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.common.approved_hosts import APPROVED_HOSTS_ENV
from components.common.errors import ConfigError, InputError
from components.common.logs import print_error
from pipelines.demo_teacher import start_teacher_server, write_demo_dataset
from pipelines.recipe_stand_ins import laptop_run, point_judge_at
from pipelines.run_console import ANSI, console
from pipelines.submit import load_run_config, pipeline_parameters

# The committed compiled pipeline: its parameters' names, types and defaults (held fresh by a test).
COMPILED = Path(__file__).with_name("distill_pipeline.yaml")

DEMO_API_KEY = "demo-local-key"
# kfp.local's error when a task fails: "Pipeline '...' finished with status FAILURE. Inner task failed: 'x'."
TASK_FAILED = re.compile(r"Inner task failed: '([\w-]+)'|Task '([\w-]+)' finished with status FAILURE")


@dataclass
class LocalRun:
    """Settings of one local run; the defaults are the demo's (about 3 minutes on 2 CPU cores)."""

    workdir: Path = Path(".demo")
    # A model folder the loopback teacher API serves instead of the demo teacher (a recipe's top-k KD).
    served_model: Path | None = None
    store_uri: str = ""  # default: <workdir>/store
    student_source: str = "tiny://qwen2?warmup_steps=400"
    dataset: str = ""  # default: a generated demo dataset in <workdir>
    dataset_size: int = 1000
    teacher_base_url: str = ""  # default: the demo teacher started on loopback
    teacher_model: str = "demo-teacher"
    parameters: dict[str, Any] = field(
        default_factory=lambda: {
            "teacher_concurrency": 32,
            "teacher_max_tokens": 64,
            "teacher_test_ratio": 0.1,
            "train_method": "lora",
            "train_lora_r": 64,
            "train_lora_alpha": 128,
            "train_learning_rate": 2e-3,
            "train_max_steps": 800,
            "train_batch_size": 32,
            "eval_max_new_tokens": 12,
            "eval_batch_size": 50,
            "eval_max_samples": 100,
            # lm-eval on the shipped demo tasks: the skill distilled, and a warm-up skill it is not
            # trained on again, which the forgetting gate watches.
            "eval_benchmark_tasks": ["demo_reverse", "demo_reverse_choice", "demo_last_letter"],
            "eval_benchmark_limit": 20,
            "eval_max_regression": {"demo_last_letter": 10},
        }
    )


@dataclass
class LocalResult:
    metrics: dict[str, float]
    report: Path
    model: Path
    tensorboard: Path
    eval_json: Path


def run_pipeline(settings: LocalRun) -> LocalResult:
    """Run the pipeline through kfp.local; starts the demo teacher unless a base URL is given."""
    from kfp import local

    # The components run from this installed package rather than their images, as intended here.
    warnings.filterwarnings("ignore", message="You may be attemping to run a task that uses custom")
    from pipelines.distill_pipeline import build_pipeline

    workdir = settings.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    dataset = settings.dataset or str(workdir / "prompts.jsonl")
    if not settings.dataset:
        write_demo_dataset(Path(dataset), settings.dataset_size, seed=0)
    with ExitStack() as stack:
        if settings.student_source.startswith("tiny://"):
            stack.enter_context(one_cpu_thread())
        base_url = settings.teacher_base_url
        if not base_url:
            if settings.served_model:
                from pipelines.model_teacher import start_model_teacher  # loads torch: only when used

                serving = start_model_teacher(settings.served_model, model=settings.teacher_model)
            else:
                serving = start_teacher_server(api_key=DEMO_API_KEY, model=settings.teacher_model)
            server = stack.enter_context(serving)
            base_url = server.base_url
            os.environ["TEACHER_API_KEY"] = DEMO_API_KEY
            os.environ[APPROVED_HOSTS_ENV] = base_url  # the laptop's own demo teacher gets the demo key
        arguments = {
            "store_uri": settings.store_uri or str(workdir / "store"),
            "student_source": settings.student_source,
            "teacher_dataset": dataset,
            "teacher_provider": "openai",
            "teacher_model": settings.teacher_model,
            **settings.parameters,
        }
        if arguments["teacher_provider"] != "local":
            arguments["teacher_base_url"] = base_url
        point_judge_at(arguments, base_url)
        local.init(
            runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(workdir / "pipeline_root")
        )
        task = build_pipeline(retries=False)(**arguments)
    outputs = task.outputs
    results = Path(outputs["results"].path)
    return LocalResult(
        metrics=dict(outputs["metrics"].metadata),
        report=Path(outputs["report"].path),
        model=Path(outputs["model"].path),
        tensorboard=Path(outputs["tensorboard"].path),
        eval_json=results / "eval.json",
    )


@contextmanager
def one_cpu_thread() -> Iterator[None]:
    """Stages started meanwhile run torch on one CPU thread (unless OMP_NUM_THREADS is set): the tiny
    models gain nothing from a second thread, and on a busy machine two threads waiting on each other
    made each training step several times slower."""
    if "OMP_NUM_THREADS" in os.environ:
        yield
        return
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        del os.environ["OMP_NUM_THREADS"]


def format_table(metrics: dict[str, float]) -> str:
    """Metrics `<model>_<name>` as a table: one row per metric name, one column per model."""
    models = ("untrained", "distilled", "teacher")
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        model, _, name = key.partition("_")
        if model in models:
            rows.setdefault(name, {})[model] = value
    present = [m for m in models if any(m in row for row in rows.values())]
    width = max([len(name) for name in rows] + [6])
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{m:>10}" for m in present)]
    for name in sorted(rows):
        cells = (f"{rows[name][m]:>10.4g}" if m in rows[name] else f"{'-':>10}" for m in present)
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 the run succeeded, 1 a task failed, 2 a bad setting (refused here or by the check
    task); an error is one line on stderr."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.run_local", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workdir", type=Path, default=Path(".demo"))
    parser.add_argument(
        "--config", type=Path, help="run file (e.g. a recipe) to run on laptop stand-ins instead of the demo"
    )
    parser.add_argument("--store-uri", default="", help="artifact store: a folder or s3://bucket/prefix")
    parser.add_argument("--student-source", default=LocalRun.student_source)
    parser.add_argument("--dataset", default="", help="prompts JSONL; default: a generated demo dataset")
    parser.add_argument("--teacher-base-url", default="", help="OpenAI-compatible URL; default: demo teacher")
    parser.add_argument("--teacher-model", default=LocalRun.teacher_model)
    parser.add_argument(
        "--set", action="append", default=[], metavar="PARAM=VALUE", help="pipeline parameter"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show every task's inputs and log lines, not only progress"
    )
    args = parser.parse_args(argv)

    settings = LocalRun(
        workdir=args.workdir,
        store_uri=args.store_uri,
        student_source=args.student_source,
        dataset=args.dataset,
        teacher_base_url=args.teacher_base_url,
        teacher_model=args.teacher_model,
    )
    try:
        params = load_run_config(args.config, args.set, pipeline_parameters(COMPILED))
    except (ConfigError, InputError) as error:
        print_error(str(error))
        return 2
    if args.config is None:
        settings.parameters.update(params)
    else:
        stand_ins = laptop_run(params, settings.workdir.resolve() / "stand-ins")
        settings.parameters = stand_ins.params
        settings.student_source = stand_ins.params["student_source"]
        settings.dataset = stand_ins.params["teacher_dataset"]
        settings.served_model = stand_ins.served_model
        print(f"{args.config}: substituted for this laptop (pipelines/recipe_stand_ins.py):")
        print("".join(f"  {line}\n" for line in stand_ins.substituted), end="")
    log_path = settings.workdir / "run.log"
    print(f"log: {log_path}{'' if args.verbose else '   (every task line; --verbose shows them here)'}")
    with console(log_path, args.verbose) as shown:
        try:
            result = run_pipeline(settings)
        except RuntimeError as error:
            failed = TASK_FAILED.search(ANSI.sub("", str(error)))
            if failed is None:
                raise
            task = failed[1] or failed[2]
            cause = shown.last_error.removeprefix("error: ") or "see the log"
            print_error(f"{cause} (task {task} failed; its log: {log_path})")
            return 2 if task == "check-run" else 1
    print("\n" + format_table(result.metrics))
    print(f"\neval JSON:   {result.eval_json}")
    print(f"model:       {result.model}   (try it: python -m components.evaluate.chat {result.model})")
    print(f"tensorboard: {result.tensorboard}   (tensorboard --logdir {result.tensorboard})")
    print(f"report:      {result.eval_json.with_name('report.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
