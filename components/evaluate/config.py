"""Configuration of the eval stage."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from components.common.config import exposed, from_dict
from components.common.errors import ConfigError
from components.common.remote_code import opt_in_field
from components.common.secrets import refuse_secret_path

SYSTEMS = ("untrained", "distilled", "teacher")
# Metrics where higher is better, so a `min_score` gate makes sense on them (see stage.check_gate).
GATE_METRICS = ("exact_match", "accuracy", "rouge1", "rouge2", "rouge_l", "bleu", "chrf", "tokens_per_s")


@dataclass
class JudgeConfig:
    """LLM-as-judge of the distilled student against the teacher (see judge.py).

    provider: the judge model, configured exactly like the teacher stage's `provider` (a named preset
        such as deepseek or qwen, or base_url + model), except that its API key comes from JUDGE_API_KEY
        unless `api_key_env` names another variable.
    max_samples: judge at most this many test samples (one request each).
    concurrency: requests in flight at once.
    """

    # Typed Any so that loading an eval config without a judge never imports the teacher package (and its
    # openai dependency): the mapping becomes a teacher-stage ProviderConfig, checked field by field, here.
    provider: Any
    max_samples: int = 50
    concurrency: int = 4

    def __post_init__(self) -> None:
        from components.common.provider_config import (
            JudgeProviderConfig,
            ProviderConfig,
            refuse_run_insecure_http,
        )

        if isinstance(self.provider, Mapping):
            self.provider = from_dict(JudgeProviderConfig, self.provider, where="judge.provider")
        elif not isinstance(self.provider, ProviderConfig):
            raise ConfigError("judge.provider: expected a mapping of the teacher stage's provider fields")
        if self.max_samples < 1:
            raise ConfigError(f"judge.max_samples: {self.max_samples} must be at least 1")
        if self.concurrency < 1:
            raise ConfigError(f"judge.concurrency: {self.concurrency} must be at least 1")
        if self.provider.is_local:
            raise ConfigError("judge.provider: the judge must be an API (name: local is not supported here)")
        refuse_run_insecure_http(self.provider, "judge.provider")


@dataclass
class BenchmarkConfig:
    """General-ability benchmarks with EleutherAI lm-evaluation-harness, and the forgetting gate (see
    benchmarks.py). Each model the stage loads (untrained, distilled, local teacher) runs every task.

    tasks: lm-eval task or group names (mmlu, gsm8k, ceval-valid, cmmlu, ifeval: passed to lm-eval
        unchanged, fetched from the Hugging Face Hub on the cluster), the project's shipped tasks by name
        (components/evaluate/tasks/: demo_reverse, demo_reverse_choice, demo_last_letter), or paths of
        task YAML files whose relative data files lie beside them. Empty: no benchmarks.
    limit: documents per task (null: all).
    num_fewshot: few-shot examples per prompt (null: each task's default).
    apply_chat_template: wrap each prompt in the model's chat template (chat students), few-shot
        examples as earlier turns.
    batch_size: lm-eval's batch size.
    think_end_token: for reasoning students, the text (or token id) that ends their thinking: generated
        answers are scored on what follows it.
    max_regression: task name -> the most points (0-100 on lm-eval's 0-1 scores) the distilled student
        may score below the untrained one on each of the task's higher-is-better metrics; the stage
        fails, saying by how much, beyond it. Tasks not named are reported, not gated.
    """

    tasks: list[str] = field(
        default_factory=list,
        metadata=exposed(
            "eval_benchmark_tasks",
            'lm-eval tasks run on each model (e.g. ["mmlu", "gsm8k"], or the shipped demo_reverse); empty: none.',
        ),
    )
    limit: int | None = field(
        default=100,
        metadata=exposed("eval_benchmark_limit", "documents per benchmark task (0 or null: all).", none_as=0),
    )
    num_fewshot: int | None = None
    apply_chat_template: bool = True
    batch_size: int = 8
    think_end_token: str | None = None
    max_regression: dict[str, float] = field(
        default_factory=dict,
        metadata=exposed(
            "eval_max_regression",
            'per benchmark task, the most points (0-100) the distilled student may lose against the untrained one, e.g. {"mmlu": 2}.',
        ),
    )

    def __post_init__(self) -> None:
        for i, task in enumerate(self.tasks):
            if not task.strip():
                raise ConfigError(f"tasks[{i}]: empty; give an lm-eval task name or a task YAML path")
            if ("/" in task or "\\" in task) and not task.endswith((".yaml", ".yml")):
                raise ConfigError(
                    f"tasks[{i}]: {task!r} is a path but not a .yaml task file; lm-eval would load any "
                    "other file itself, importing the Python it names"
                )
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"tasks: {self.tasks} names a task twice")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit: {self.limit} must be at least 1 (or null for all)")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ConfigError(f"num_fewshot: {self.num_fewshot} must be 0 or more (or null)")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: {self.batch_size} must be at least 1")
        for task, points in self.max_regression.items():
            if not 0 <= points <= 100:
                raise ConfigError(f"max_regression.{task}: {points} must be between 0 and 100 points")
        if self.max_regression and not self.tasks:
            raise ConfigError("max_regression: set, but no benchmark tasks run; add them to benchmarks.tasks")


@dataclass
class Config:
    """What to compare, how to generate, and when to fail.

    Inputs
      student_dir: the untrained student (the download stage's model folder).
      trained_dir: the distilled student (the merge stage's model folder, or a PEFT adapter folder, which is
          applied unmerged on top of student_dir).
      data_dir: the teacher dataset folder; its test.jsonl holds prompts, teacher answers and references.
      validation: a held-out validation file given by the run, scored instead of data_dir's test split
          (local or s3://; teacher records, or labelled rows in the teacher's formats read as the teacher
          stage reads them: validation.py; empty: the test split).
      teacher_dir: a local teacher model folder, when there is one: its speed and size are measured.
      tensorboard_dir: the train stage's TensorBoard logs (a folder or s3:// prefix) for the loss curve.
    Output
      output_dir: receives report.html (one self-contained file) and eval.json (everything).
    Generation (greedy unless do_sample)
      max_new_tokens, batch_size, max_samples (the first N test records): see their help; do_sample,
      temperature, top_p, top_k, seed, dtype ("auto" keeps the stored dtype), device ("auto" = CUDA
      when present).
      engine: "auto" generates with vLLM when it is installed and the device is CUDA (full model
          folders), else HF generate; "vllm" or "hf" insist (see vllm_sampling.py).
    Scoring
      zh_tokenizer: "char" (one token per CJK character) or "jieba" words, for ROUGE.
      checker: "package.module:function" called as function(prompt, answer, reference) -> bool | None;
          gives `accuracy` when answers can be checked beyond string equality (see checkers.py:
          reverse_letters for the demo, final_number for GSM8K-style math).
      judge: optional LLM-as-judge settings; adds `judge_win_rate` of the distilled student vs the teacher.
      report_samples: how many side-by-side samples the HTML report shows (eval.json holds them all).
    Benchmarks
      benchmarks: lm-eval tasks on every model and the forgetting gate (BenchmarkConfig).
    Gate
      gate_metric: `<untrained|distilled|teacher>_<metric>` (scored against the teacher's answers),
          `<system>_ref_<metric>` (against the dataset's references, when records have them) or
          `judge_win_rate`; the metric must be one where higher is better (see GATE_METRICS). ROUGE, BLEU,
          chrF, exact match and accuracy are 0-1.
      min_score: see its help; the failure says by how much the metric fell short.
    """

    student_dir: str
    trained_dir: str
    data_dir: str
    output_dir: str
    teacher_dir: str | None = None
    tensorboard_dir: str | None = None
    validation: str = field(
        default="",
        metadata=exposed(
            "eval_validation",
            "held-out validation file scored instead of the teacher data's test split (s3:// or a path in "
            "the image; empty: the test split).",
        ),
    )
    # 256 by default: teacher answers run to hundreds of tokens, and a student cut off at 64 scores low
    # for length alone.
    max_new_tokens: int = field(
        default=256, metadata=exposed("eval_max_new_tokens", "generation length on the test split.")
    )
    batch_size: int = field(default=16, metadata=exposed("eval_batch_size", "prompts generated together."))
    # 200 by default: three systems generate for every record, so a whole large test split would cost
    # hours of GPU for little more precision.
    max_samples: int | None = field(
        default=200,
        metadata=exposed("eval_max_samples", "test records evaluated (0 or null: all).", none_as=0),
    )
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    seed: int = 0
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # The run's opt-in to the students' own code (components/common/remote_code.py).
    trust_remote_code: bool = opt_in_field()
    # Score the distilled student loaded in 8-bit or 4-bit (bitsandbytes), as it will be served.
    quantization: Literal["none", "8bit", "4bit"] = "none"
    engine: Literal["auto", "hf", "vllm"] = "auto"
    zh_tokenizer: Literal["char", "jieba"] = "char"
    checker: str | None = None
    judge: JudgeConfig | None = None
    report_samples: int = 20
    benchmarks: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    gate_metric: str = field(
        default="distilled_rouge_l",
        metadata=exposed("eval_gate_metric", "metric that eval_min_score applies to."),
    )
    min_score: float | None = field(
        default=None,
        metadata=exposed(
            "eval_min_score",
            "fail the run when the gate metric is below this value (0 or null: no gate).",
            none_as=0.0,
        ),
    )

    def __post_init__(self) -> None:
        for name in ("student_dir", "trained_dir", "data_dir", "output_dir"):
            if not getattr(self, name):
                raise ConfigError(f"{name}: empty; give a folder path")
        if self.validation and not self.validation.startswith("s3://"):
            refuse_secret_path(self.validation, "validation")
        for name in ("max_new_tokens", "batch_size", "report_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: {getattr(self, name)} must be at least 1")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"max_samples: {self.max_samples} must be at least 1 (or null for all)")
        if self.do_sample and self.temperature <= 0:
            raise ConfigError(f"temperature: {self.temperature} must be positive when do_sample is true")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p: {self.top_p} must be in (0, 1]")
        if self.checker is not None and ":" not in self.checker:
            raise ConfigError(f"checker: {self.checker!r} must look like 'package.module:function'")
        if not is_gate_metric(self.gate_metric):
            allowed = ", ".join(f"<{'|'.join(SYSTEMS)}>_{m}" for m in GATE_METRICS[:3])
            raise ConfigError(
                f"gate_metric: {self.gate_metric!r} is not a metric the gate can use; write it like "
                f"{allowed}, … ({', '.join(GATE_METRICS)}) or judge_win_rate"
            )
        system, _, metric = self.gate_metric.partition("_")
        if system == "teacher" and metric in ("exact_match", "rouge1", "rouge2", "rouge_l", "bleu", "chrf"):
            raise ConfigError(
                f"gate_metric: {self.gate_metric} is never computed (the teacher's answers are what students "
                f"are scored against); use teacher_ref_{metric} (against references) or teacher_accuracy"
            )
        if self.gate_metric == "judge_win_rate" and self.judge is None and self.min_score is not None:
            raise ConfigError("gate_metric: judge_win_rate needs the `judge` section to be set")


def is_gate_metric(name: str) -> bool:
    if name == "judge_win_rate":
        return True
    system, _, metric = name.partition("_")
    return system in SYSTEMS and metric.removeprefix("ref_") in GATE_METRICS
