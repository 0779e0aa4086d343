"""Configuration of the teacher-data stage: where prompts come from, which teacher answers, how safely.

Fields are grouped by concern; every one is checked when the YAML is loaded (components/common/config.py),
and rules that tie two fields together live in `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Literal

from components.common.config import exposed
from components.common.errors import ConfigError
from components.common.provider_config import JudgeProviderConfig, ProviderConfig, refuse_run_insecure_http
from components.common.runs import check_run_id
from components.common.secrets import JUDGE_KEY_ENV, refuse_secret_path
from components.teacher.templates import render_file_template, render_prompt_template, template_variables

DatasetFormat = Literal["auto", "prompts", "alpaca", "sharegpt", "messages", "text"]
AnswerPolicy = Literal["retry", "keep", "drop"]
HF_DATASETS = "hf://datasets/"
# Seconds between SIGTERM and SIGKILL for the stage's pod: Kubernetes' default
# terminationGracePeriodSeconds. kfp-kubernetes 2.17 has no setting for it (its task settings are
# timeouts, node selectors, tolerations, volumes, secrets, labels ...), so every pipeline pod gets it.
POD_GRACE_S = 30
# What saving takes after the wait for answers in flight: a journal part and the spend ledger.
STOP_SAVE_S = 5


@dataclass
class TextConfig:
    """How raw text (dataset_format: text) becomes prompts.

    chunk_chars: target size of a chunk; chunks end on a sentence boundary (。！？.!? and newlines) when
        one lies within the chunk, so a chunk may be shorter. overlap_chars: text repeated from the end of
        one chunk at the start of the next (whole sentences). template: "qa" (questions and answers about
        the chunk), "continue" (continue in the same style), or the path of a Jinja file of your own that
        receives `chunk`.
    kinds: mix several templates in one run, template -> share, e.g. {qa: 0.6, continue: 0.4}: each chunk
        gets one template, drawn from a hash of (seed, chunk) so a rerun makes the same prompts; the
        record keeps the chunk id and the template as extra.chunk and extra.prompt_kind. Empty: `template`
        for every chunk.
    """

    chunk_chars: int = 1000
    overlap_chars: int = 0
    template: str = "qa"
    kinds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if any(share < 0 for share in self.kinds.values()) or (self.kinds and not sum(self.kinds.values())):
            raise ConfigError("text.kinds: shares must be >= 0 and not all 0, e.g. {qa: 0.6, continue: 0.4}")
        if self.chunk_chars < 16:
            raise ConfigError(f"chunk_chars: {self.chunk_chars} is too small; use at least 16")
        if not 0 <= self.overlap_chars < self.chunk_chars:
            raise ConfigError(f"overlap_chars: {self.overlap_chars} must be in [0, chunk_chars)")


@dataclass
class FieldMap:
    """Which fields of arbitrary JSON, parquet or Hugging Face rows hold what; a dotted path reaches into
    nested values (`solutions.0`). question: the user prompt (may be left out when prompt_template builds
    it from the row's fields). answer: the gold answer, kept as the record's reference. system: a
    per-row system prompt."""

    question: str | None = None
    answer: str | None = None
    system: str | None = None

    @property
    def enabled(self) -> bool:
        return any((self.question, self.answer, self.system))


@dataclass
class BatchConfig:
    """How `mode: batch` uses the provider's Batch API (batch.py).

    max_requests_per_file, max_bytes_per_file: the prompts are split into batch input files within
        these (OpenAI: 50,000 requests and 200 MB a file; DashScope: 50,000 and 500 MB).
    completion_window: the window asked of the provider ("24h"); items it leaves unanswered come back
        expired.
    poll_s, poll_max_s: the first wait between status polls, growing by half each poll up to the cap.
    on_failure: what happens to items a batch did not answer (failed, expired, cancelled, or an answer
        the on_empty/on_length policy retries): "sync" asks them one request each at the full price,
        "batch" submits them again in a new batch (at most max_resubmits times, then they count as
        failed), "drop" leaves them unanswered.
    """

    max_requests_per_file: int = 50_000
    max_bytes_per_file: int = 100_000_000
    completion_window: str = "24h"
    poll_s: float = 30.0
    poll_max_s: float = 600.0
    on_failure: Literal["sync", "batch", "drop"] = "sync"
    max_resubmits: int = 2

    def __post_init__(self) -> None:
        if self.max_requests_per_file < 1:
            raise ConfigError(f"batch.max_requests_per_file: {self.max_requests_per_file} must be at least 1")
        if self.max_bytes_per_file < 1024:
            raise ConfigError(
                f"batch.max_bytes_per_file: {self.max_bytes_per_file} is too small; use at least 1024"
            )
        if not 0 < self.poll_s <= self.poll_max_s:
            raise ConfigError(
                f"batch.poll_s: {self.poll_s} must be positive and at most poll_max_s={self.poll_max_s}"
            )
        if self.max_resubmits < 0:
            raise ConfigError(f"batch.max_resubmits: {self.max_resubmits} must be 0 or more")


@dataclass
class JudgeConfig:
    """Verification of answers against the dataset's `reference` by a second model.

    enabled: judge every answer that has a reference; accepted ones are kept, rejected ones go to
        rejected.jsonl. provider: the judge model (same client; defaults to the teacher's provider). Its
        key comes from JUDGE_API_KEY unless provider.api_key_env says otherwise, also when the judge is
        the teacher's provider: to judge with the teacher's key, name TEACHER_API_KEY there.
    template: "judge" (the shipped template) or the path of a Jinja file receiving prompt, reference,
        answer; the judge's reply must contain ACCEPT or REJECT.
    hint_rejected: ask the teacher once more for each rejected answer, with the gold answer as a hint
        (guided chain of thought, seed 001), and judge the new answer; an accepted one is kept under the
        original prompt, so the student learns the reasoning without the hint. Counted in the summary as
        judge_hinted / judge_hint_accepted. hint_template: "hint" (the shipped template) or the path of a
        Jinja file receiving prompt and reference. hinted_answers: where an answer accepted after the
        hint goes: "train" (with the other kept records) or "dpo" (only hinted.jsonl and, with export:
        [dpo], a preference pair choosing it over the unhinted answer: seed 001 keeps these guided
        chains of thought for its later RL stage).
    """

    enabled: bool = False
    provider: JudgeProviderConfig | None = None
    template: str = "judge"
    hint_rejected: bool = False
    hint_template: str = "hint"
    hinted_answers: Literal["train", "dpo"] = "train"

    def __post_init__(self) -> None:
        if self.hint_rejected and not self.enabled:
            raise ConfigError("judge.hint_rejected: re-asks what the judge rejects; set judge.enabled: true")


@dataclass
class Config:
    """The teacher-data stage: read prompts, ask the teacher, keep every answer safe, filter and split.

    Source
      dataset: prompts file or folder, local path or s3://bucket/key, or a Hugging Face dataset
        hf://datasets/org/name[@revision] read with the `datasets` library (dataset_split, dataset_config
        pick its split and configuration). .parquet files are read in row batches. dataset_format: see
        readers.py; "auto" decides from the first record. fields: read arbitrary rows through a mapping
        (see FieldMap); prompt_template (Jinja) then sees every field of the row. bad_lines: "fail" on the first malformed line, or "skip"
        it and count it. max_samples: use only the first N prompts (after dedup and length filters).
      system_prompt: replaces any system message of the source. prompt_template: wraps every user
        prompt; "{prompt}" (str.format) or "{{ prompt }}" (Jinja), or the path of a file holding it.
    Teacher
      provider: see ProviderConfig. provider_config: a teacher_config.yaml of named providers (empty:
        the one shipped beside this file). concurrency: requests in flight (a refilling pool).
      mode: "sync" asks one request per prompt; "batch" submits the prompts to the provider's Batch
        API (OpenAI-compatible /v1/batches: OpenAI, DashScope), at its batch prices, answered within its
        completion window; see BatchConfig and batch.py.
      think_in_answer: write the teacher's reasoning into the answer as <think>...</think>.
      on_empty / on_length: what to do with an empty answer / one cut off by max_tokens: "retry" asks
        again (at most provider.max_retries times, then drops it), "keep" or "drop".
    Money
      max_cost (in the providers' price unit), max_requests: never exceeded, for the whole run (every
        attempt of every invocation, a resumed or retried one counting what the run spent before): a
        request is reserved at its worst-case cost before it leaves, and the run stops cleanly, keeping
        all answers so far, once the next request might not fit. max_cost needs the teacher's (and the
        judge's) prices and provider.max_tokens. With shards each gets its share of both.
        use_cache: reuse answers from any earlier run with the same prompt and settings.
      min_answered_ratio: below this share of the planned prompts answered, the stage saves what it
        has and fails with the count of each cause, so that a retry of the task resumes (a budget stop
        is not a failure).
    Storage
      output_dir: receives train.jsonl, test.jsonl, rejected.jsonl, summary.json (and
        logprobs.parquet when provider.logprobs is on). store_uri: artifact
        store (local folder or s3://) for shards and the cache; empty: the folder `.store` beside
        output_dir. run_id: names the run-scoped prefix runs/<run_id>/teacher, so a restarted task
        resumes. checkpoint_records / checkpoint_seconds: answers are saved at least this often.
      stop_wait_s: on SIGTERM, how long the answers in flight may still land before the stage stops
        without them (they count at their worst-case cost; a restart asks them again); at most
        POD_GRACE_S - STOP_SAVE_S, so the pod saves everything before Kubernetes kills it.
      log_every_s: a progress line in the log this often. progress_bar: a tqdm bar (None: only when
        stderr is a terminal).
    Quality
      dedup: drop exact duplicate prompts (a 32-byte digest per prompt: fine at a million).
        near_dup_threshold: also drop prompts whose character 5-gram Jaccard similarity to an earlier
        one reaches this (0-1; None: off; uses numpy). It keeps every kept prompt's 5-grams in memory,
        about 100 bytes per character of prompt (30 KB for a 260-character prompt): within a 1 GB pod
        that is some tens of thousands of prompts; for more, leave it off or give the pod the memory.
        min/max_prompt_chars,
        min/max_answer_chars: length filters. test_ratio, seed: the split.
    """

    dataset: str = field(
        metadata=exposed(
            "teacher_dataset",
            "prompts file or folder (local path in the image, or s3://).",
            pipeline_default="s3://distill/datasets/prompts.jsonl",
        )
    )
    output_dir: str
    dataset_format: DatasetFormat = field(
        default="auto",
        metadata=exposed("teacher_dataset_format", "auto, prompts, alpaca, sharegpt, messages or text."),
    )
    dataset_split: str = "train"
    dataset_config: str | None = None
    fields: FieldMap = field(default_factory=FieldMap)
    bad_lines: Literal["fail", "skip"] = "fail"
    max_samples: int | None = None
    # Several datasets mixed into one, location -> the share of its own rows taken (a seeded sample of
    # int(rows x share)), as seed 004 mixes {grpo_data.json: 0.7, sft_data.json: 0.3}; `dataset` is one
    # of the locations. Each is read like `dataset` (format, fields, templates). Empty: `dataset` alone.
    mix: dict[str, float] = field(default_factory=dict)
    system_prompt: str | None = field(
        default=None,
        metadata=exposed(
            "teacher_system_prompt", "system prompt added to every request (empty: none).", none_as=""
        ),
    )
    prompt_template: str | None = None
    text: TextConfig = field(default_factory=TextConfig)

    provider: ProviderConfig = field(default_factory=ProviderConfig)
    provider_config: str = ""
    concurrency: int = field(
        default=16, metadata=exposed("teacher_concurrency", "requests in flight at once.")
    )
    mode: Literal["sync", "batch"] = field(
        default="sync",
        metadata=exposed(
            "teacher_mode",
            "sync (a request per prompt) or batch (the provider's Batch API, cheaper, slower).",
        ),
    )
    batch: BatchConfig = field(default_factory=BatchConfig)
    think_in_answer: bool = False
    on_empty: AnswerPolicy = "retry"
    on_length: AnswerPolicy = "drop"
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    max_cost: float | None = None
    max_requests: int | None = None
    use_cache: bool = True
    min_answered_ratio: float = 0.95
    # Extra copies of the kept train records for other trainers: sharegpt (+ dataset_info.json, the
    # layout LLaMA-Factory reads); alpaca (instruction/input/output, with chunk_id and category for raw
    # text, as the published raw-text recipe writes them); dpo (preference pairs from the judge's rejected
    # answers, the gold answer as the chosen one, for a later preference stage as seed 001 plans).
    export: list[Literal["sharegpt", "alpaca", "dpo"]] = field(default_factory=list)

    store_uri: str = ""
    run_id: str = "local"
    checkpoint_records: int = 32
    checkpoint_seconds: float = 10.0
    stop_wait_s: float = 20.0
    log_every_s: float = 30.0
    progress_bar: bool | None = None

    dedup: bool = True
    near_dup_threshold: float | None = None
    min_prompt_chars: int = 1
    max_prompt_chars: int | None = None
    min_answer_chars: int = 0
    max_answer_chars: int | None = None
    test_ratio: float = field(
        default=0.1, metadata=exposed("teacher_test_ratio", "share of records held out for evaluation.")
    )
    seed: int = field(
        default=0, metadata=exposed("seed", "seed of the teacher data's split and of training.")
    )

    def __post_init__(self) -> None:
        if not self.dataset:
            raise ConfigError("dataset: empty; give a prompts file or folder (local path or s3://)")
        if not self.output_dir:
            raise ConfigError("output_dir: empty; give the folder that receives train.jsonl and test.jsonl")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency: {self.concurrency} must be at least 1")
        if not 0 <= self.test_ratio < 1:
            raise ConfigError(f"test_ratio: {self.test_ratio} must be in [0, 1)")
        if self.mix and self.dataset not in self.mix:
            raise ConfigError(
                f"mix: the dataset {self.dataset} must be one of its locations, e.g. mix: {{{self.dataset}: 0.7, "
                "<another dataset>: 0.3}"
            )
        if any(not 0 < share <= 1 for share in self.mix.values()):
            raise ConfigError(f"mix: each share of a dataset's rows must be in (0, 1], got {self.mix}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"max_samples: {self.max_samples} must be at least 1, or unset for all")
        if self.near_dup_threshold is not None and not 0 < self.near_dup_threshold <= 1:
            raise ConfigError(f"near_dup_threshold: {self.near_dup_threshold} must be in (0, 1]")
        if self.max_cost is not None and self.max_cost <= 0:
            raise ConfigError(f"max_cost: {self.max_cost} must be positive, or unset for no limit")
        if self.max_requests is not None and self.max_requests < 1:
            raise ConfigError(f"max_requests: {self.max_requests} must be at least 1, or unset")
        if not 0 <= self.min_answered_ratio <= 1:
            raise ConfigError(f"min_answered_ratio: {self.min_answered_ratio} must be in [0, 1]")
        if self.checkpoint_records < 1:
            raise ConfigError(f"checkpoint_records: {self.checkpoint_records} must be at least 1")
        if not 0 <= self.stop_wait_s <= POD_GRACE_S - STOP_SAVE_S:
            raise ConfigError(
                f"stop_wait_s: {self.stop_wait_s} must be in [0, {POD_GRACE_S - STOP_SAVE_S}]: the pod has "
                f"{POD_GRACE_S} s after SIGTERM, and saving takes up to {STOP_SAVE_S} s after the wait"
            )
        check_run_id(self.run_id)
        refuse_run_insecure_http(self.provider, "provider")
        if self.judge.provider is not None:
            refuse_run_insecure_http(self.judge.provider, "judge.provider")
        if self.mode == "batch" and (self.provider.is_local or self.provider.answers_from_dataset):
            raise ConfigError("mode: batch needs an API provider; the local teacher generates in-process")
        if self.judge.hinted_answers == "dpo" and "dpo" not in self.export:
            raise ConfigError("judge.hinted_answers: dpo writes preference pairs; add dpo to export")
        if self.judge.hint_rejected and (self.provider.is_local or self.provider.answers_from_dataset):
            raise ConfigError(
                "judge.hint_rejected: re-asking with a hint needs an API teacher (provider.base_url); "
                f"provider {self.provider.name!r} cannot be asked again"
            )
        self._check_source()
        if not self.dataset.startswith(("s3://", HF_DATASETS)):
            refuse_secret_path(self.dataset, "dataset")
        # Judging on the teacher's own provider still takes the judge's key variable: the teacher's key
        # reaches a judge only where a config names it.
        if self.judge.enabled and self.judge.provider is None:
            fields = {**dataclasses.asdict(self.provider), "api_key_env": JUDGE_KEY_ENV}
            self.judge.provider = JudgeProviderConfig(**fields)
        self._check_templates()
        if self.store_uri == "":
            self.store_uri = os.path.join(os.path.dirname(os.path.abspath(self.output_dir)), ".store")

    def _check_source(self) -> None:
        if self.dataset.startswith("hf://") and not self.dataset.startswith(HF_DATASETS):
            raise ConfigError(
                f"dataset: {self.dataset!r}: a Hugging Face dataset is written hf://datasets/org/name[@revision]"
            )
        if self.dataset.startswith(HF_DATASETS):
            repo = self.dataset[len(HF_DATASETS) :].partition("@")[0]
            if repo.count("/") != 1 or not all(repo.split("/")):
                raise ConfigError(f"dataset: {self.dataset!r}: expected hf://datasets/org/name[@revision]")
        if self.fields.enabled:
            if self.dataset_format not in ("auto", "prompts"):
                raise ConfigError(
                    f"fields: rows are read through the mapping, which dataset_format {self.dataset_format!r} "
                    "contradicts; leave dataset_format auto"
                )
            if not self.fields.question and not self.prompt_template:
                raise ConfigError(
                    "fields.question: name the field holding the prompt, or give a Jinja prompt_template "
                    "over the row's fields (e.g. {{ title }})"
                )

    def _check_templates(self) -> None:
        """Render every template once with sample values, so an unsafe or broken one stops the run at
        load, before any request."""
        if self.prompt_template and self.fields.enabled:
            sample = {name: "A sample value." for name in template_variables(self.prompt_template)}
            question = "A sample prompt." if self.fields.question else None
            render_prompt_template(self.prompt_template, question, sample)
        elif self.prompt_template:
            render_prompt_template(self.prompt_template, "A sample prompt.")
        render_file_template(self.text.template, field="text.template", chunk="A sample passage.")
        for kind in self.text.kinds:
            render_file_template(kind, field="text.kinds", chunk="A sample passage.")
        if self.judge.enabled:
            sample = {"prompt": "A sample question?", "reference": "A reference.", "answer": "An answer."}
            render_file_template(self.judge.template, field="judge.template", **sample)
        if self.judge.hint_rejected:
            sample = {"prompt": "A sample question?", "reference": "A reference."}
            render_file_template(self.judge.hint_template, field="judge.hint_template", **sample)
