"""The train stage's configuration: one dataclass, fields grouped by concern, checked when loaded.

    python -m components.train --config train.yaml --set method=full --set max_steps=50

Every field is documented where it is declared: its type, its default and why that default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from components.common.chat_template import ChatTemplate
from components.common.config import exposed
from components.common.errors import ConfigError
from components.common.remote_code import opt_in_field
from components.common.runs import check_run_id
from components.train.init_checkpoint import check_init_checkpoint


@dataclass
class LoraSettings:
    """LoRA adapter shape (peft). Used by `method: lora` and `method: qlora`."""

    # 16 suits most SFT, larger ranks for new skills on small students.
    r: int = field(default=16, metadata=exposed("train_lora_r", "LoRA rank of the update matrices."))
    # 2 * r is the usual choice.
    alpha: int = field(
        default=32,
        metadata=exposed(
            "train_lora_alpha", "LoRA alpha: the update is scaled by alpha / r (alpha / sqrt(r) with rslora)."
        ),
    )
    dropout: float = 0.05
    # Module names or peft's "all-linear" (every linear layer except the output head).
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    # Rank-stabilized scaling alpha / sqrt(r): keeps the update size steady when r grows.
    use_rslora: bool = False
    # Weight-decomposed LoRA: learns magnitude and direction separately; slower, often better at low r.
    use_dora: bool = False
    # Extra modules trained in full and saved with the adapter (e.g. ["lm_head"] for new tokens).
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ConfigError(f"lora.r: must be a positive rank, got {self.r}")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha: must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout: must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError('lora.target_modules: name at least one module, or use ["all-linear"]')


@dataclass
class OnPolicySettings:
    """Student-sampled continuations for kd.kind 'on_policy' (see components/train/on_policy.py)."""

    # lambda: the share of each micro-batch's prompts answered by the student's own sample (GKD's 0.5
    # keeps half the batch on teacher text, which anchors the early steps when the samples are poor).
    fraction: float = 0.5
    # Sampling temperature of the student (0: greedy); 1 samples its true distribution, as GKD does.
    temperature: float = 1.0
    # Longest sample; a sample ends earlier at the end-of-turn token.
    max_new_tokens: int = 128
    # What samples: "auto" a vLLM engine beside the student where it can (a CUDA GPU, the vllm package,
    # method full), else HF generate; "vllm" or "hf" insist (see components/train/vllm_sampling.py).
    engine: Literal["auto", "hf", "vllm"] = "auto"

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ConfigError(f"on_policy.fraction: must be in [0, 1], got {self.fraction}")
        if self.temperature < 0:
            raise ConfigError(f"on_policy.temperature: must be >= 0 (0 is greedy), got {self.temperature}")
        if self.max_new_tokens <= 0:
            raise ConfigError(f"on_policy.max_new_tokens: must be positive, got {self.max_new_tokens}")


# The KD kinds that ask a teacher (a local model or kd.teacher_url) to score every batch.
SCORING_KINDS = ("logits", "on_policy")


@dataclass
class KDSettings:
    """Logit-level distillation, mixed with cross-entropy on the teacher's answers.

    loss = (1 - alpha) * CE + alpha * divergence(teacher || student at temperature T) * T^2
    """

    # logits: a local teacher model (teacher_dir) runs on every batch. With the student's tokenizer it
    #       gives full-vocabulary KD; with another one its top_k per token is aligned by bytes
    #       (components/train/cross_tokenizer.py).
    # topk: the teacher's top-k log-probabilities stored in the records (extra["logprobs"]); no teacher
    #       model needed, any teacher tokenizer. See components/train/sparse_kd.py for the format.
    # on_policy: as logits, and a share of each batch is the student's own samples (kd.on_policy).
    kind: Literal["none", "logits", "topk", "on_policy"] = field(
        default="none",
        metadata=exposed(
            "train_kd",
            "logit-level distillation on top of SFT: none, logits (local teacher), topk (stored top_logprobs) "
            "or on_policy (the teacher scores the student's own samples).",
        ),
    )
    # forward_kl covers all the teacher's modes; reverse_kl seeks its main one; jsd interpolates (beta).
    # For a teacher with the student's tokenizer run locally. One that gives only its top_k (another
    # tokenizer, a server, stored logprobs) is matched by forward KL over the top k + the rest, or by
    # sorted probabilities where the token spans differ (components/train/cross_tokenizer.py).
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    # Generalized JSD mixing weight: 0 is forward KL, 1 reverse KL (as in TRL's GKD).
    beta: float = 0.5
    # Softens both distributions; > 1 exposes the teacher's ranking of wrong tokens ("dark knowledge").
    temperature: float = 1.0
    # Weight of the KD term; the CE term gets 1 - alpha.
    alpha: float = 0.5
    # Local teacher model folder for kind 'logits' (and for the intermediate-layer terms).
    teacher_dir: str = ""
    # A PEFT adapter applied on top of teacher_dir, unmerged (a folder or s3://bucket/prefix): a base +
    # LoRA teacher needs no merge step first.
    teacher_adapter: str = ""
    # Load the teacher in 8-bit with bitsandbytes: halves its memory again versus bf16 (slow on a CPU).
    teacher_8bit: bool = False
    # Scored tokens per chunk of the loss: the full-vocabulary logits exist for one chunk at a time.
    chunk_size: int = 1024
    on_policy: OnPolicySettings = field(default_factory=OnPolicySettings)
    # Candidates per position kept from a teacher whose tokenizer differs from the student's (or one
    # served over HTTP): they carry nearly all of a trained model's mass.
    top_k: int = 20
    # A vLLM OpenAI-compatible server that scores for the teacher (prompt_logprobs) instead of a local
    # model: teacher_dir then needs only the teacher's tokenizer files. teacher_model names it there.
    teacher_url: str = ""
    teacher_model: str = ""
    # Seconds one scoring request to teacher_url may take in all (connect, send, the whole reply).
    teacher_timeout_s: float = 120.0
    # Samples per scoring request to teacher_url (vLLM takes a list of prompts; one where refused).
    teacher_batch_size: int = 8
    # Scoring requests to teacher_url in flight at once.
    teacher_concurrency: int = 8
    # Retries of a scoring request that failed for a passing cause (busy, server error, connection lost,
    # deadline); a request the server refuses is not retried.
    teacher_retries: int = 4

    @property
    def needs_scoring_teacher(self) -> bool:
        return self.kind in SCORING_KINDS

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"kd.alpha: must be in [0, 1], got {self.alpha}")
        if not 0.0 <= self.beta <= 1.0:
            raise ConfigError(f"kd.beta: must be in [0, 1], got {self.beta}")
        if self.temperature <= 0:
            raise ConfigError(f"kd.temperature: must be positive, got {self.temperature}")
        if self.kind == "logits" and not self.teacher_dir:
            raise ConfigError("kd.teacher_dir: kind 'logits' needs a local teacher model folder")
        if self.kind == "on_policy" and not self.teacher_dir:
            raise ConfigError(
                "kd.teacher_dir: kind 'on_policy' needs a teacher that scores the student's new samples (a "
                "local model folder, or its tokenizer with kd.teacher_url); stored top_logprobs (kind topk) "
                "only cover the teacher's own answers"
            )
        if self.top_k <= 0:
            raise ConfigError(f"kd.top_k: must be positive, got {self.top_k}")
        if self.teacher_url and not self.needs_scoring_teacher:
            raise ConfigError(
                f"kd.teacher_url: only kinds 'logits' and 'on_policy' ask a teacher to score; kind "
                f"{self.kind!r} does not, so remove kd.teacher_url"
            )
        if not self.teacher_timeout_s > 0:
            raise ConfigError(f"kd.teacher_timeout_s: must be positive, got {self.teacher_timeout_s}")
        for name in ("teacher_batch_size", "teacher_concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"kd.{name}: must be at least 1, got {getattr(self, name)}")
        if self.teacher_retries < 0:
            raise ConfigError(f"kd.teacher_retries: must be 0 or more, got {self.teacher_retries}")
        if self.teacher_url and not self.teacher_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"kd.teacher_url: must start with http:// or https://, got {self.teacher_url!r}"
            )


@dataclass
class IntermediateSettings:
    """Intermediate-layer distillation terms against a local teacher (kd.teacher_dir); weight 0 is off."""

    # MSE between student hidden states (through a learned linear projection when widths differ) and the
    # teacher's, on the mapped layers.
    hidden_weight: float = 0.0
    # MSE between attention probability maps on the mapped layers (heads averaged when counts differ).
    attention_weight: float = 0.0
    # InfoNCE between mean-pooled student and teacher final states: each record's student representation
    # must pick its own teacher representation out of the batch.
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.1
    # [[student_layer, teacher_layer], ...] with 1-based block indices (0 is the embeddings); empty maps
    # every student block to the teacher block at the same relative depth.
    layer_map: list[list[int]] = field(default_factory=list)
    # Divide each term by its running mean magnitude, so that no term dominates by its scale alone.
    balance: bool = False

    @property
    def enabled(self) -> bool:
        return self.hidden_weight > 0 or self.attention_weight > 0 or self.contrastive_weight > 0

    def __post_init__(self) -> None:
        for name in ("hidden_weight", "attention_weight", "contrastive_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"intermediate.{name}: must be >= 0, got {getattr(self, name)}")
        if any(len(pair) != 2 for pair in self.layer_map):
            raise ConfigError("intermediate.layer_map: each entry is [student_layer, teacher_layer]")


@dataclass
class PhaseSettings:
    """One curriculum phase; a field left at None inherits the top-level value."""

    name: str
    # Source name -> share of the phase's records ("main" is data_dir, others come from `datasets`). A
    # share written {from: 0.3, to: 0.7} ramps linearly over the phase's steps (see curriculum.py).
    mix: dict[str, float | dict[str, float]] = field(default_factory=dict)
    # Records per epoch of this phase; 0 means as many as its sources hold together.
    samples: int = 0
    max_steps: int = -1
    num_epochs: float = 1.0
    # Micro-batch size of this phase (None: the top-level batch_size), e.g. 16 / 8 / 4 as phases narrow.
    batch_size: int | None = None
    learning_rate: float | None = None
    kd_alpha: float | None = None
    temperature: float | None = None
    hidden_weight: float | None = None
    attention_weight: float | None = None
    contrastive_weight: float | None = None
    # kd.on_policy.fraction for this phase (kd.kind on_policy), e.g. teacher text first, own samples later.
    on_policy_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.on_policy_fraction is not None and not 0.0 <= self.on_policy_fraction <= 1.0:
            raise ConfigError(
                f"curriculum phase {self.name!r}: on_policy_fraction must be in [0, 1], got {self.on_policy_fraction}"
            )
        for source, share in self.mix.items():
            if isinstance(share, dict) and set(share) != {"from", "to"}:
                raise ConfigError(
                    f"curriculum phase {self.name!r}: mix.{source} is a share or a ramp {{from: 0.3, to: 0.7}}, "
                    f"got keys {sorted(share)}"
                )
        ranges = [self.share_range(source) for source in self.mix]
        if any(min(r) < 0 for r in ranges) or (
            self.mix and (sum(r[0] for r in ranges) <= 0 or sum(r[1] for r in ranges) <= 0)
        ):
            raise ConfigError(f"curriculum phase {self.name!r}: mix shares must be >= 0 and not all 0")
        if self.max_steps <= 0 and self.num_epochs <= 0:
            raise ConfigError(f"curriculum phase {self.name!r}: set max_steps > 0 or num_epochs > 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(
                f"curriculum phase {self.name!r}: batch_size must be at least 1, got {self.batch_size}"
            )

    def share_range(self, source: str) -> tuple[float, float]:
        """(share at the phase's first step, share at its last) of one source of the mix."""
        share = self.mix[source]
        return (share["from"], share["to"]) if isinstance(share, dict) else (share, share)


# A Kubernetes object name (DNS-1123 subdomain) that is also a valid label value (at most 63 characters).
KUBERNETES_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?")


@dataclass
class ClusterSettings:
    """Where multi-node training runs on the cluster (components/train/multinode/); a one-pod run
    (train_nodes 1, engine auto) ignores these."""

    engine: Literal["auto", "trainjob", "pytorchjob"] = field(
        default="auto",
        metadata=exposed(
            "train_engine",
            "training job for train_nodes > 1: auto (TrainJob where Kubeflow Trainer v2 is served, else PyTorchJob), "
            "trainjob or pytorchjob (these two also with one node).",
        ),
    )
    runtime: str = field(
        default="distill-torch",
        metadata=exposed(
            "train_runtime",
            "ClusterTrainingRuntime the TrainJob uses: distill-torch (manifests/trainer) or one the platform provides.",
        ),
    )
    queue_name: str = field(
        default="",
        metadata=exposed(
            "train_queue_name",
            "Kueue LocalQueue that admits the training job (kueue.x-k8s.io/queue-name); empty: no queue.",
        ),
    )
    priority_class: str = field(
        default="",
        metadata=exposed(
            "train_priority_class",
            "Kueue WorkloadPriorityClass of the training job (kueue.x-k8s.io/priority-class); empty: the default.",
        ),
    )

    def __post_init__(self) -> None:
        for name in ("runtime", "queue_name", "priority_class"):
            value = getattr(self, name)
            if (value or name == "runtime") and not KUBERNETES_NAME.fullmatch(value):
                raise ConfigError(
                    f"cluster.{name}: {value!r} is not a Kubernetes name (lower-case letters, digits, '-' "
                    "and '.', at most 63 characters, starting and ending with a letter or digit)"
                )


@dataclass
class Config:
    """Supervised distillation of teacher records into a student, optionally with logit-level KD."""

    # --- inputs and outputs ---------------------------------------------------------------------------
    # Student model folder (Hugging Face layout: config.json, tokenizer, *.safetensors).
    student_dir: str
    # Teacher dataset folder holding train.jsonl of distillation records.
    data_dir: str
    # Where the adapter (or the full model), the tokenizer and train_summary.json are written.
    output_dir: str
    # Where TensorBoard event files are written (a separate KFP artifact).
    tensorboard_dir: str
    # Artifact store for run-scoped checkpoints and live TensorBoard logs; "" keeps everything local.
    store_uri: str = ""
    # Names this run's prefix in the store: runs/<run_id>/train/...; a retry with the same id resumes.
    run_id: str = "local"

    # --- parameterization -----------------------------------------------------------------------------
    method: Literal["lora", "qlora", "full"] = field(
        default="lora",
        metadata=exposed(
            "train_method",
            "lora: adapters on a frozen student; qlora: adapters on a 4-bit student (CUDA); full: every weight.",
        ),
    )
    lora: LoraSettings = field(default_factory=LoraSettings)

    # --- schedule -------------------------------------------------------------------------------------
    # -1 by default: one pass over the data whatever its size, rather than a step count that suits one
    # dataset size only.
    max_steps: int = field(
        default=-1,
        metadata=exposed(
            "train_max_steps",
            "optimizer steps; when > 0 it overrides num_epochs (the data repeats as needed), -1 trains num_epochs passes.",
        ),
    )
    # Passes over the training records when max_steps <= 0.
    num_epochs: float = 1.0
    batch_size: int = field(
        default=8, metadata=exposed("train_batch_size", "records per micro-batch (per GPU).")
    )
    # Micro-batches per optimizer step: the effective batch is batch_size * this * number of devices.
    gradient_accumulation_steps: int = 1
    learning_rate: float = field(default=2e-4, metadata=exposed("train_learning_rate", "peak learning rate."))
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    # Fraction of the steps spent warming the learning rate up linearly from 0.
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    # Gradients are clipped to this global norm; 0 disables clipping.
    max_grad_norm: float = 1.0
    seed: int = field(
        default=0, metadata=exposed("seed", "seed of the teacher data's split and of training.")
    )
    # The run's opt-in to the student's (and a KD teacher's) own code (components/common/remote_code.py).
    trust_remote_code: bool = opt_in_field()

    # --- data -----------------------------------------------------------------------------------------
    # Token budget of one record after the chat template; see `truncation` for longer ones.
    max_length: int = 1024

    # drop: skip records longer than max_length (logged); left: cut the oldest prompt tokens and keep the
    # answer whole; right: cut the end (the answer loses its tail and its end-of-turn token).
    truncation: Literal["drop", "left", "right"] = "drop"
    # The teacher's chain of thought: drop it, show it unscored before the answer, or train on it too.
    reasoning: Literal["drop", "context", "train"] = "drop"
    # A student tokenizer without a chat template (Qwen v1, base models): refused ("model") or given
    # ChatML ("chatml"); see components/common/chat_template.py.
    chat_template: ChatTemplate = "model"
    # Score only the final assistant turn (the teacher's) or every assistant turn of the conversation.
    assistant_turns: Literal["last", "all"] = "last"
    # How a micro-batch's records become tensors (batching.py):
    # padding_free: all records end to end in one row, no padding at all; attention stays inside each
    #   record (a variable-length flash kernel on CUDA, see varlen.py). The fastest layout.
    # padded: one row per record, right-padded to the longest; grouped: the same with records of similar
    #   length batched together; packed: rows of at most max_length tokens, several records each.
    batching: Literal["padding_free", "padded", "grouped", "packed"] = "padding_free"

    # Extra teacher datasets for curriculum mixes: name -> a teacher-data folder (train.jsonl, and
    # test.jsonl for held-out evaluation) or its location in the store (s3://bucket/prefix).
    datasets: dict[str, str] = field(default_factory=dict)

    # --- distillation ---------------------------------------------------------------------------------
    kd: KDSettings = field(default_factory=KDSettings)
    intermediate: IntermediateSettings = field(default_factory=IntermediateSettings)

    # --- curriculum -----------------------------------------------------------------------------------
    # Phases run in order, each continuing from the previous one's weights; empty = one phase.
    curriculum: list[PhaseSettings] = field(default_factory=list)
    # First and last phase to run, inclusive, counted from 1 as `--start_stage 2` counts them; end_phase
    # 0 means through the last phase.
    start_phase: int = 1
    end_phase: int = 0
    # Start from a chosen checkpoint of an earlier run instead of the student's own weights, as seed 002's
    # `--checkpoint_path` does (init_checkpoint.py): its output_dir, or one phase's best weights in it
    # (output_dir/best/<phase>), local or s3://. Empty: the student as downloaded.
    init_checkpoint: str = ""
    # Held-out evaluation every eval_steps optimizer steps of a phase and at its end (0: none): the loss
    # on the test.jsonl records of the phase's sources goes to TensorBoard (eval/loss), the best weights
    # of each phase by that loss are kept in output_dir/best/<phase>/, and sample_count teacher-vs-student
    # answers go to TensorBoard's TEXT tab.
    eval_steps: int = 0
    # Held-out records scored per evaluation (the first ones of the phase's sources).
    eval_samples: int = 64
    sample_count: int = 4
    sample_max_new_tokens: int = 64

    # --- numerics -------------------------------------------------------------------------------------
    # auto: bf16 on a CUDA device that supports it, else fp32. bf16 runs on a CPU too (slowly); fp16 needs
    # CUDA.
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    # Recompute activations in the backward pass: less memory for about a third more compute.
    gradient_checkpointing: bool = False
    # Attention kernel: auto is variable-length flash attention for padding-free batches (varlen.py) and
    # transformers' choice (sdpa) otherwise; eager is needed for attention-map losses.
    attention: Literal["auto", "eager", "sdpa", "flash_attention_2"] = "auto"

    # Compile each decoder block with torch.compile, with dynamic shapes so that one compilation serves
    # every batch length: fuses the norms, rotary embedding, activation and LoRA branches into fewer
    # kernels. Costs about a minute of compilation when training starts.
    compile: bool = False

    # --- distributed --------------------------------------------------------------------------------
    # DeepSpeed ZeRO config shipped in components/train/deepspeed/ (none: plain DDP or single device).
    deepspeed: Literal["none", "zero0", "zero2", "zero2_offload", "zero3", "zero3_offload"] = "none"
    # With more than one visible GPU, re-launch this stage on all of them (torchrun or accelerate launch).
    launcher: Literal["auto", "none", "torchrun", "accelerate"] = "auto"
    # The training job of a multi-node run: engine, runtime, Kueue queue and priority.
    cluster: ClusterSettings = field(default_factory=ClusterSettings)

    # --- operations -----------------------------------------------------------------------------------
    # Optimizer steps between log lines and TensorBoard points.
    logging_steps: int = 10
    # Optimizer steps between checkpoints in the store; 0 turns checkpoints off.
    save_steps: int = 0
    # Checkpoints kept in the store (the newest ones); older ones are deleted.
    save_total_limit: int = 2
    # Extra trackers besides TensorBoard: wandb, mlflow, swanlab (each must be installed).
    report_to: list[str] = field(default_factory=list)
    # Seconds between copies of the TensorBoard files to the store while training runs.
    tensorboard_sync_seconds: float = 30.0

    def __post_init__(self) -> None:
        for name in ("student_dir", "data_dir", "output_dir", "tensorboard_dir"):
            if not getattr(self, name):
                raise ConfigError(f"{name}: must name a folder")
        check_run_id(self.run_id)
        positive = {
            "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "max_length": self.max_length,
            "logging_steps": self.logging_steps,
            "save_total_limit": self.save_total_limit,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name}: must be positive, got {value}")
        if self.max_steps <= 0 and self.num_epochs <= 0:
            raise ConfigError("max_steps / num_epochs: set max_steps > 0 or num_epochs > 0")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate: must be positive, got {self.learning_rate}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.save_steps < 0:
            raise ConfigError(f"save_steps: must be 0 (off) or a number of steps, got {self.save_steps}")
        if self.save_steps and not self.store_uri:
            raise ConfigError(
                "save_steps: checkpoints are written to the artifact store; set store_uri (a local folder "
                "or s3://bucket/prefix) or save_steps: 0"
            )
        if self.method == "qlora" and self.deepspeed.startswith("zero3"):
            raise ConfigError(
                "deepspeed: ZeRO-3 shards parameters across GPUs, but QLoRA's 4-bit weights are packed "
                "bitsandbytes tensors that ZeRO-3 cannot partition and gather; use zero2 with qlora, or "
                "method lora with zero3"
            )
        if self.compile and self.deepspeed.startswith("zero3"):
            raise ConfigError(
                "compile: ZeRO-3 gathers each block's parameters in hooks around its forward pass, which "
                "torch.compile does not trace; use deepspeed zero2 (or none) with compile, or compile: false"
            )
        if self.kd.kind == "on_policy" and self.deepspeed.startswith("zero3"):
            raise ConfigError(
                "kd.kind: on_policy samples with the student's generate(), which under ZeRO-3 gathers every "
                "layer's weights for each new token; use deepspeed zero2 (or none) with on_policy"
            )
        if self.kd.teacher_url and self.intermediate.enabled:
            raise ConfigError(
                "kd.teacher_url: intermediate-layer terms need the teacher's hidden states, which a server "
                "does not return; use a local teacher model, or set the intermediate weights to 0"
            )
        needs_teacher = self.kd.needs_scoring_teacher or self.intermediate.enabled
        if needs_teacher and not self.kd.teacher_dir:
            raise ConfigError("kd.teacher_dir: intermediate-layer terms need a local teacher model folder")
        if self.intermediate.attention_weight > 0 and self.attention not in ("auto", "eager"):
            raise ConfigError("attention: attention-map distillation needs the 'eager' kernel")
        names = {"main", *self.datasets}
        for phase in self.curriculum:
            unknown = sorted(set(phase.mix) - names)
            if unknown:
                raise ConfigError(
                    f"curriculum phase {phase.name!r}: mix names {unknown[0]!r}, which is not 'main' or a "
                    f"key of datasets ({', '.join(sorted(names))})"
                )
        for phase in self.curriculum:
            for term in ("hidden", "attention", "contrastive"):
                if (getattr(phase, f"{term}_weight") or 0) > 0 and getattr(
                    self.intermediate, f"{term}_weight"
                ) == 0:
                    raise ConfigError(
                        f"curriculum phase {phase.name!r}: {term}_weight > 0 needs intermediate.{term}_weight > 0 "
                        "(the term and its projection are set up from the top-level value); set it there and "
                        f"give {term}_weight: 0 to the phases that skip it"
                    )
        count = len(self.curriculum)
        if self.curriculum and not 0 <= self.end_phase <= count:
            raise ConfigError(
                f"end_phase: {self.end_phase} but the curriculum has phases 1..{count} (0: through the last)"
            )
        if self.curriculum and not 1 <= self.start_phase <= (self.end_phase or count):
            raise ConfigError(
                f"start_phase: {self.start_phase} is not a phase from 1 to end_phase; phases count from 1"
            )
        if not self.curriculum and (self.start_phase != 1 or self.end_phase not in (0, 1)):
            raise ConfigError("start_phase / end_phase: only meaningful with a curriculum")
        if self.init_checkpoint and not self.init_checkpoint.startswith("s3://"):
            check_init_checkpoint(Path(self.init_checkpoint), self.method)
        if self.eval_steps < 0 or self.eval_samples < 1 or self.sample_count < 0:
            raise ConfigError("eval_steps / eval_samples / sample_count: must be >= 0 (eval_samples >= 1)")
        if self.max_grad_norm < 0:
            raise ConfigError(f"max_grad_norm: must be >= 0 (0 disables clipping), got {self.max_grad_norm}")
