"""Configuration of the eval stage."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from components.common.config import exposed, from_dict
from components.common.errors import ConfigError

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
        from components.teacher.config import JudgeProviderConfig, ProviderConfig

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


@dataclass
class Config:
    """What to compare, how to generate, and when to fail.

    Inputs
      student_dir: the untrained student (the download stage's model folder).
      trained_dir: the distilled student (the merge stage's model folder, or a PEFT adapter folder, which is
          applied unmerged on top of student_dir).
      data_dir: the teacher dataset folder; its test.jsonl holds prompts, teacher answers and references.
      teacher_dir: a local teacher model folder, when there is one: its speed and size are measured.
      tensorboard_dir: the train stage's TensorBoard logs (a folder or s3:// prefix) for the loss curve.
    Output
      output_dir: receives report.html (one self-contained file) and eval.json (everything).
    Generation (greedy unless do_sample)
      max_new_tokens, batch_size, max_samples (the first N test records): see their help; do_sample,
      temperature, top_p, top_k, seed, dtype ("auto" keeps the stored dtype), device ("auto" = CUDA
      when present).
    Scoring
      zh_tokenizer: "char" (one token per CJK character) or "jieba" words, for ROUGE.
      checker: "package.module:function" called as function(prompt, answer, reference) -> bool | None;
          gives `accuracy` when answers can be checked beyond string equality (see checkers.py:
          reverse_letters for the demo, final_number for GSM8K-style math).
      judge: optional LLM-as-judge settings; adds `judge_win_rate` of the distilled student vs the teacher.
      report_samples: how many side-by-side samples the HTML report shows (eval.json holds them all).
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
    zh_tokenizer: Literal["char", "jieba"] = "char"
    checker: str | None = None
    judge: JudgeConfig | None = None
    report_samples: int = 20
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
