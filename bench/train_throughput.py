"""Training throughput against TRL's SFTTrainer (same shapes, tokens, LoRA, steps), and the cost of a KD step.

On a GPU machine (one H100, no internet), with the wheels it lacks (liger-kernel==0.8.5 and its
dependencies) downloaded beforehand into .whl/ (`pip download -d .whl liger-kernel==0.8.5`), run from the
repository root (estimated 6-8 minutes; runs are cut or skipped at --budget, 540 s, so it ends inside a
10-minute limit):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; export PYTHONPATH=$PYTHONPATH:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1; python3 bench/train_throughput.py 2>&1 | tee $OUT/train_throughput.log

Here, on CPU (tiny shapes, fp32, every mode that runs without CUDA; about a minute):

    python bench/train_throughput.py --tiny

What runs, each in a fresh process on the GPU (peak memory and Liger's patching stay inside one run):
- models: random-init Qwen2.5-0.5B and -1.5B shapes (151,936-row tied head) made on the GPU, saved bf16,
  with the byte-level ChatML tokenizer of components/common/tiny_model.py (no Qwen tokenizer offline).
- SFT, per shape: LoRA r=16 alpha 32, dropout 0, all linear layers, bf16 base + fp32 adapters under bf16
  autocast, micro-batch 16, no gradient checkpointing (TRL's default is on: turned off for both), AdamW
  (fused), constant lr, clip 1.0. TRL modes: padding, padding + Liger, padding-free, packing (bfd, 1024),
  all with SDPA; and padding-free + Liger with our variable-length flash kernel registered as
  the attention function (TRL documents padding-free for flash-attention 2/3, which cannot be installed
  here; that mode stands in for it). Ours: batching padding_free, attention auto.
- KD: 0.5B student trained in full (fp32 weights, bf16 autocast) with a 1.5B teacher (bf16), 8 x 512
  tokens, 0.5 CE + 0.5 forward KL over the answer tokens: a naive step written here (every position's
  full-vocabulary logits from both models, fp32 log-softmax), ours, and our SFT step on the same tokens;
  then on-policy KD (kd.kind on_policy, half of each batch's answers sampled by the student up to the
  answers' length) against ours KD, in tokens/s.
- Loss curve: ours and TRL padding over the same first 50 batches from the same base weights (the LoRA
  B matrices start at 0 and A is drawn from the same seed, so step 1 must agree almost exactly).

Same tokens for both: the samples (~300 prompt + ~80 answer tokens, normally spread, loss on the answer and
its end-of-turn token) are tokenized once with our own Encoder. TRL gets those input_ids and labels as a
pre-tokenized dataset, in the order our trainer draws its batches, read sequentially; ours reads the
records and tokenizes them itself, and the table's token column shows both saw the same tokens.
Timing: steps warmup+1 .. warmup+steps, from the end of one optimizer step to the end of another with the
GPU synchronised at both ends only; tokens/s counts real (non-padding) tokens. MFU = 6 * N * tokens/s /
989 TFLOP/s (H100 SXM dense bf16), N = the base model's parameters with the tied head counted once: an
accounting which overstates the work of LoRA (frozen weights get no weight gradient) and of a
loss on answer tokens only (the head runs on ~20% of positions), so it compares runs, not kernels.
"Within noise" for the loss curve: the 5-step moving averages of the two curves differ by at most 2% of
the loss at every step. Both runs see identical batches, so the batch-to-batch scatter that separates two
ordinary loss curves cancels out (it is printed beside the figure for scale); what remains is rounding in
different bf16 kernels. On CPU in fp32 the two curves agree to four decimals.
Last line: key=value headline figures.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import string
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the GPU machine reaches no hub: fail fast, never wait
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PEAK_FLOPS = 989e12  # H100 SXM, dense bf16
QWEN_VOCAB = 151936


def qwen2(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int) -> dict:
    return dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
    )


SHAPES = {"0.5B": qwen2(896, 24, 14, 2, 4864), "1.5B": qwen2(1536, 28, 12, 2, 8960)}  # Qwen2.5's, tied head
TINY_SHAPES = {"0.5B": qwen2(64, 2, 4, 2, 128), "1.5B": qwen2(96, 3, 6, 2, 192)}
# name: (label, SFTConfig fields, what it needs). Packing's max_length is the row length.
TRL_MODES = {
    "trl_padded": ("TRL padding", {}, ()),
    "trl_padded_liger": ("TRL padding + Liger", {"use_liger_kernel": True}, ("cuda", "liger")),
    "trl_padding_free": ("TRL padding-free", {"padding_free": True, "max_length": None}, ()),
    "trl_packing_bfd": ("TRL packing bfd", {"packing": True, "packing_strategy": "bfd"}, ()),
    "trl_padding_free_liger_varlen": (
        "TRL padding-free + Liger, varlen flash",
        {"padding_free": True, "max_length": None, "use_liger_kernel": True},
        ("cuda", "liger", "varlen"),
    ),
}
OURS = "ours (padding-free, attention auto)"
OURS_COMPILED = "ours + torch.compile (regional)"
# The CPU smoke test: every run of the GPU plan, scaled down to seconds.
TINY = {
    "family": TINY_SHAPES,
    "vocab": 1024,
    "batch": 4,
    "prompt_tokens": (48, 12),
    "answer_tokens": (16, 5),
    "pack_length": 256,
    "warmup": 1,
    "steps": 3,
    "curve_steps": 12,
    "kd_batch": 4,
    "kd_length": 128,
    "kd_answer": 24,
    "kd_warmup": 1,
    "kd_steps": 2,
}


@dataclass(frozen=True)
class Plan:
    device: str
    family: dict  # SHAPES or TINY_SHAPES
    shapes: tuple[str, ...] = ("0.5B", "1.5B")  # the SFT shapes run
    vocab: int = QWEN_VOCAB
    batch: int = 16
    prompt_tokens: tuple[int, int] = (300, 90)  # mean, spread of the tokens before the answer
    answer_tokens: tuple[int, int] = (80, 30)  # mean, spread of the scored tokens
    pack_length: int = 1024
    warmup: int = 3
    steps: int = 15
    curve_steps: int = 50
    # A random-init student's LoRA loss falls visibly within 50 steps at this rate (speed is unaffected).
    lr: float = 1e-3
    kd_batch: int = 8
    kd_length: int = 512
    kd_answer: int = 80
    kd_warmup: int = 2
    kd_steps: int = 6
    have: tuple[str, ...] = field(default_factory=tuple)  # of "cuda", "liger", "varlen"

    @property
    def dtype(self) -> str:
        return "bfloat16" if self.device == "cuda" else "float32"


def make_plan(args) -> Plan:
    import torch

    cuda = torch.cuda.is_available() and not args.tiny
    have = ["cuda"] if cuda else []
    have += ["liger"] if importlib.util.find_spec("liger_kernel") else []
    try:
        from components.train import varlen

        have += ["varlen"] if getattr(varlen, "FLASH", None) is not None else []
    except ImportError:
        pass
    plan = Plan("cuda" if cuda else "cpu", SHAPES, have=tuple(have))
    if args.tiny:
        plan = replace(plan, **TINY)
    return replace(
        plan,
        shapes=tuple(args.shapes.split(",")),
        warmup=args.warmup or plan.warmup,
        steps=args.steps or plan.steps,
        curve_steps=args.curve_steps if args.curve_steps is not None else plan.curve_steps,
    )


def parameters(shape: dict, vocab: int) -> int:
    """Weights of a Qwen2 of this shape, tied head counted once (0.5B: 494,032,768)."""
    d, inter = shape["hidden_size"], shape["intermediate_size"]
    kv = d // shape["num_attention_heads"] * shape["num_key_value_heads"]  # width of k and of v
    attention = (d * d + d) + 2 * (d * kv + kv) + d * d  # q, k, v with bias; o without
    mlp = 3 * d * inter  # gate, up, down
    return shape["num_hidden_layers"] * (attention + mlp + 2 * d) + vocab * d + d  # + embedding, final norm


# --- the samples, tokenized once ----------------------------------------------------------------------
def text(rng: random.Random, chars: int) -> str:
    words = []
    while len(" ".join(words)) < chars:
        words.append("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))))
    return " ".join(words)[:chars]


def make_data(folder: Path, plan: Plan, count: int, seed: int, batch: int, fixed: int = 0) -> dict:
    """train.jsonl for ours, tokens.json (ids and labels in our batch order) for TRL and the naive step.

    The tokenizer is byte-level, so one character is one token; `fixed` > 0 makes every sample exactly
    that many tokens long with kd_answer of them scored."""
    from components.common.records import Record, record_id, write_records
    from components.common.tiny_model import build_tokenizer
    from components.train.batching import BatchStream
    from components.train.data import Encoder

    encoder = Encoder(build_tokenizer(), max_length=1024)
    rng = random.Random(seed)
    records, examples = [], []
    for _ in range(count):
        if fixed:
            prompt, answer = fixed - plan.kd_answer, plan.kd_answer
        else:
            prompt = min(800, max(32, round(rng.gauss(*plan.prompt_tokens))))
            answer = min(200, max(4, round(rng.gauss(*plan.answer_tokens))))
        # The template adds 19 tokens before the answer and <|im_end|> (scored) + "\n" after it.
        messages = [
            {"role": "user", "content": text(rng, prompt - 19)},
            {"role": "assistant", "content": text(rng, answer - 1)},
        ]
        record = Record(record_id(messages[:1], {"seed": seed}), messages)
        example = encoder.encode(record)
        if fixed and len(example.input_ids) != fixed:  # nudge the prompt to the exact length
            messages[0]["content"] = text(rng, len(messages[0]["content"]) + fixed - len(example.input_ids))
            record = Record(record_id(messages[:1], {"seed": seed}), messages)
            example = encoder.encode(record)
        records.append(record)
        examples.append(example)
    stream = BatchStream(examples, batch, 0, False)  # the trainer's own order for seed 0, one epoch
    ordered = [e for i in range(stream.batches_per_epoch) for e in stream.get(i)]
    write_records(folder / "train.jsonl", records)
    tokens = {"input_ids": [e.input_ids for e in ordered], "labels": [e.labels for e in ordered]}
    (folder / "tokens.json").write_text(json.dumps(tokens))
    lengths = [len(e.input_ids) for e in examples]
    scored = [e.num_scored for e in examples]
    return {
        "dir": str(folder),
        "tokens": str(folder / "tokens.json"),
        "mean_len": sum(lengths) / count,
        "mean_scored": sum(scored) / count,
        "min_len": min(lengths),
        "max_len": max(lengths),
    }


# --- one measured run (a child process on the GPU) -----------------------------------------------------
class Clock:
    """Wall time of steps warmup+1 .. warmup+steps (GPU synchronised at both ends), their real tokens,
    and every step's loss (kept on the device until the end: no extra synchronisation per step)."""

    def __init__(self, warmup: int, steps: int, cuda: bool):
        self.warmup, self.steps, self.cuda = warmup, steps, cuda
        self.done, self.tokens, self.losses, self.marks = 0, [], [], []

    def step(self, tokens, loss) -> None:
        import torch

        self.losses.append(loss.detach().float() if isinstance(loss, torch.Tensor) else torch.tensor(loss))
        self.done += 1
        if self.warmup < self.done <= self.warmup + self.steps:
            self.tokens.append(tokens)
        if self.done in (self.warmup, self.warmup + self.steps):
            if self.cuda:
                torch.cuda.synchronize()
            self.marks.append(time.perf_counter())

    def result(self) -> dict:
        import torch

        if len(self.marks) != 2:
            raise RuntimeError(
                f"ran {self.done} steps, fewer than warm-up {self.warmup} + timed {self.steps}"
            )
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else float("nan")
        return {
            "tokens": float(sum(float(t) for t in self.tokens)),
            "seconds": self.marks[1] - self.marks[0],
            "steps": self.steps,
            "peak_gib": peak,
            "losses": [float(x) for x in self.losses],
        }


def start_device(job: dict) -> bool:
    import torch

    torch.manual_seed(0)
    if job["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return job["device"] == "cuda"


def job_models(job: dict) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from components.common.tiny_model import build_tokenizer

    tokenizer = build_tokenizer()
    for name, shape in job["shapes"].items():
        config = Qwen2Config(
            vocab_size=job["vocab"],
            tie_word_embeddings=True,
            max_position_embeddings=32768,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
            **shape,
        )
        torch.manual_seed(0)
        with torch.device(job["device"]):  # initialised where it will train: seconds, not minutes
            model = Qwen2ForCausalLM._from_config(config, dtype=getattr(torch, job["dtype"]))
        model.save_pretrained(Path(job["root"]) / name)
        tokenizer.save_pretrained(Path(job["root"]) / name)
        del model
    return {}


def job_trl(job: dict) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from torch.utils.data import SequentialSampler
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    cuda = start_device(job)
    clock, pending = Clock(job["warmup"], job["steps"], cuda), []
    attention = "sdpa"
    if job["varlen"]:
        from components.train import varlen

        attention = varlen.register()

    class TimedSFT(SFTTrainer):
        def _get_train_sampler(self, train_dataset=None):
            # Our batch order, as prepared (packing reorders rows itself).
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

        def training_step(self, model, inputs, *args, **kwargs):
            loss = super().training_step(model, inputs, *args, **kwargs)
            mask = inputs.get("attention_mask")  # padding-free rows hold no padding at all
            pending.append((mask.sum() if mask is not None else inputs["input_ids"].numel(), loss))
            return loss

    class StepEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.step(*pending.pop())

    settings = {"max_length": job["pack_length"] if job["fields"].get("packing") else 1024, **job["fields"]}
    args = SFTConfig(
        output_dir=job["out"],
        max_steps=job["total"],
        per_device_train_batch_size=job["batch"],
        learning_rate=job["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        gradient_checkpointing=False,
        bf16=cuda,
        use_cpu=not cuda,
        seed=0,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        model_init_kwargs={"dtype": job["dtype"], "attn_implementation": attention},
        **settings,
    )
    trainer = TimedSFT(
        model=job["student_dir"],
        args=args,
        train_dataset=Dataset.from_dict(json.loads(Path(job["tokens"]).read_text())),
        processing_class=AutoTokenizer.from_pretrained(job["student_dir"]),
        peft_config=LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
        callbacks=[StepEnd()],
    )
    trainer.train()
    return clock.result()


def job_ours(job: dict) -> dict:
    from components.common.config import from_dict
    from components.train import Config
    from components.train.trainer import DistillTrainer

    cuda = start_device(job)
    clock = Clock(job["warmup"], job["steps"], cuda)

    class TimedTrainer(DistillTrainer):
        def loss_step(self, stage, micro_batches):
            stats = super().loss_step(stage, micro_batches)
            clock.step(stats["tokens"], stats["mixed"] / stats["scored"])  # mean loss per scored token
            return stats

    trainer = TimedTrainer(from_dict(Config, job["config"]))
    trainer.setup()
    trainer.train()
    return clock.result()


def job_naive_kd(job: dict) -> dict:
    """The straightforward KD step: all logits of both models, fp32 log-softmax, KL + CE on answer tokens."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    cuda = start_device(job)
    device = torch.device(job["device"])
    student = AutoModelForCausalLM.from_pretrained(
        job["student_dir"], dtype=torch.float32, attn_implementation="sdpa"
    ).to(device)
    teacher = AutoModelForCausalLM.from_pretrained(
        job["teacher_dir"], dtype=getattr(torch, job["dtype"]), attn_implementation="sdpa"
    ).to(device)
    teacher.eval().requires_grad_(False)
    student.train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=job["lr"], fused=cuda)
    data = json.loads(Path(job["tokens"]).read_text())
    clock, batch = Clock(job["warmup"], job["steps"], cuda), job["batch"]
    for step in range(job["total"]):
        rows = slice(step * batch, (step + 1) * batch)  # every sample has the same length: no padding
        ids = torch.tensor(data["input_ids"][rows], device=device)
        labels = torch.tensor(data["labels"][rows], device=device)[:, 1:]
        scored = labels != -100
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            logits = student(input_ids=ids, use_cache=False).logits[:, :-1]
            with torch.no_grad():
                teacher_logits = teacher(input_ids=ids, use_cache=False).logits[:, :-1]
        log_q = F.log_softmax(logits.float(), dim=-1)  # (batch, length, vocab) fp32, twice over
        log_p = F.log_softmax(teacher_logits.float(), dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)[scored].sum()
        ce = -log_q.gather(-1, labels.clamp_min(0)[..., None])[..., 0][scored].sum()
        loss = (0.5 * ce + 0.5 * kl) / scored.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.step(ids.numel(), loss)
    return clock.result()


JOBS = {"models": job_models, "trl": job_trl, "ours": job_ours, "naive_kd": job_naive_kd}


# --- the orchestra: jobs in fresh processes (GPU) or inline (CPU), within a time budget ----------------
class Runner:
    def __init__(self, plan: Plan, root: Path, isolate: bool, budget: float):
        self.plan, self.root, self.isolate, self.budget = plan, root, isolate, budget
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def __call__(self, name: str, job: dict) -> dict:
        left = self.budget - self.elapsed()
        if left < 20:
            print(f"[{self.elapsed():5.0f}s] {name}: skipped, time budget spent", file=sys.stderr)
            return {"error": "skipped (time budget)"}
        job = {"device": self.plan.device, "dtype": self.plan.dtype, "root": str(self.root), **job}
        began = time.perf_counter()
        try:
            if self.isolate:
                result = self._child(job, left)
            else:
                with contextlib.redirect_stdout(sys.stderr):  # the trainers' own log lines
                    result = JOBS[job["kind"]](job)
        except Exception as error:  # one broken mode must not lose the others' figures
            traceback.print_exc()
            result = {"error": f"{type(error).__name__}: {error}"[:120]}
        print(f"[{self.elapsed():5.0f}s] {name}: {time.perf_counter() - began:.0f}s", file=sys.stderr)
        return result

    def _child(self, job: dict, timeout: float) -> dict:
        path = self.root / f"job-{time.monotonic_ns()}.json"
        path.write_text(json.dumps(job))
        try:
            done = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--child", str(path)],
                stdout=subprocess.PIPE,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return {"error": "killed at the time budget"}
        lines = done.stdout.splitlines()
        results = [json.loads(line[7:]) for line in lines if line.startswith("RESULT ")]
        print("\n".join(line for line in lines if not line.startswith("RESULT ")), file=sys.stderr)
        return results[-1] if results else {"error": f"exit status {done.returncode}"}


def ours_config(plan: Plan, run_dir: Path, student_dir: str, data_dir: str, total: int, **extra) -> dict:
    return {
        "student_dir": student_dir,
        "data_dir": data_dir,
        "output_dir": str(run_dir / "model"),
        "tensorboard_dir": str(run_dir / "tb"),
        "method": "lora",
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["all-linear"]},
        "max_steps": total,
        "batch_size": plan.batch,
        "learning_rate": plan.lr,
        "lr_scheduler": "constant",
        "warmup_ratio": 0.0,
        "max_grad_norm": 1.0,
        "max_length": 1024,
        "batching": "padding_free",
        "precision": "bf16" if plan.device == "cuda" else "fp32",
        "gradient_checkpointing": False,
        "logging_steps": 10,
        "launcher": "none",
        **extra,
    }


def sft_section(run: Runner, plan: Plan, data: dict) -> dict:
    results = {}
    for shape in plan.shapes:
        student_dir = str(run.root / shape)
        curve = shape == "0.5B" and plan.curve_steps > 0  # ours and TRL padding go on for the curve
        base = plan.warmup + plan.steps
        timing = {"warmup": plan.warmup, "steps": plan.steps, "batch": plan.batch, "lr": plan.lr}
        row = results[shape] = {}
        total = max(base, plan.curve_steps) if curve else base
        config = ours_config(plan, run.root / f"ours-{shape}", student_dir, data["dir"], total)
        row[OURS] = run(f"{shape} ours", {"kind": "ours", "config": config, **timing})
        for mode, (label, fields, needs) in TRL_MODES.items():
            if not set(needs) <= set(plan.have):
                continue
            total = max(base, plan.curve_steps) if curve and mode == "trl_padded" else base
            job = {
                "kind": "trl",
                "student_dir": student_dir,
                "tokens": data["tokens"],
                "fields": fields,
                "varlen": "varlen" in needs,
                "pack_length": plan.pack_length,
                "total": total,
                "out": str(run.root / f"{mode}-{shape}"),
                **timing,
            }
            row[label] = run(f"{shape} {label}", job)
    return results


def compile_section(run: Runner, plan: Plan, data: dict, results: dict) -> None:
    """Ours again with compiled blocks, after everything else: its compilation costs a minute per shape,
    so the time budget cuts this row first."""
    timing = {"warmup": plan.warmup, "steps": plan.steps, "batch": plan.batch, "lr": plan.lr}
    for shape in plan.shapes:
        config = ours_config(
            plan,
            run.root / f"ours-compiled-{shape}",
            str(run.root / shape),
            data["dir"],
            plan.warmup + plan.steps,
        )
        config["compile"] = True
        results[shape][OURS_COMPILED] = run(
            f"{shape} ours compiled", {"kind": "ours", "config": config, **timing}
        )


def kd_section(run: Runner, plan: Plan, data: dict) -> dict:
    student, teacher = str(run.root / "0.5B"), str(run.root / "1.5B")
    timing = {"warmup": plan.kd_warmup, "steps": plan.kd_steps, "batch": plan.kd_batch, "lr": 1e-5}
    total = plan.kd_warmup + plan.kd_steps
    full = {"method": "full", "batch_size": plan.kd_batch, "learning_rate": 1e-5, "max_length": 1024}
    kd = {"kind": "logits", "teacher_dir": teacher, "alpha": 0.5}
    naive = {
        "kind": "naive_kd",
        "student_dir": student,
        "teacher_dir": teacher,
        "tokens": data["tokens"],
        "total": total,
        **timing,
    }

    def ours(name: str, **extra) -> dict:
        config = ours_config(plan, run.root / name, student, data["dir"], total, **full, **extra)
        return run(f"KD {name}", {"kind": "ours", "config": config, **timing})

    return {
        "naive full-vocabulary KD": run("KD naive", naive),
        "ours KD": ours("ours-kd", kd=kd),
        "ours SFT, same student and tokens": ours("ours-sft"),
        # Full fine-tuning keeps fp32 weights, gradients and AdamW state (16 bytes per weight, ~8 GB for
        # 0.5B) beside a 3 GB teacher: recomputing activations is the lever left for memory.
        "ours KD, gradient checkpointing": ours("ours-kd-ckpt", kd=kd, gradient_checkpointing=True),
        # Half of each batch's answers sampled by the student (KV cache, temperature 1) up to the teacher
        # answers' length, then scored by the teacher: the price of on-policy KD over KD on teacher text.
        "ours on-policy KD, fraction 0.5": ours(
            "ours-on-policy",
            kd={**kd, "kind": "on_policy", "on_policy": {"fraction": 0.5, "max_new_tokens": plan.kd_answer}},
        ),
    }


# --- the report -----------------------------------------------------------------------------------------
def rate(result: dict) -> float:
    return result["tokens"] / result["seconds"] if "tokens" in result else float("nan")


def cell(value: float, form: str) -> str:
    return "-" if value != value else format(value, form)


def report_sft(plan: Plan, results: dict) -> dict[str, float]:
    print(
        f"\nSFT LoRA r=16 all-linear, {plan.dtype}, micro-batch {plan.batch}, steps {plan.warmup + 1}.."
        f"{plan.warmup + plan.steps} timed, real tokens only; MFU = 6*N*tok/s / 989 TFLOP/s"
    )
    print(f"{'shape':6} {'mode':42} {'tokens':>8} {'tok/s':>9} {'MFU':>6} {'peak GiB':>9}")
    ratios = {}
    for shape, row in results.items():
        n = parameters(plan.family[shape], plan.vocab)
        for label, result in row.items():
            if "error" in result:
                print(f"{shape:6} {label:42} failed: {result['error']}")
                continue
            mfu = 6 * n * rate(result) / PEAK_FLOPS
            print(
                f"{shape:6} {label:42} {result['tokens']:8.0f} {rate(result):9.0f} {mfu:6.1%} "
                f"{cell(result['peak_gib'], '9.1f')}"
            )
        done = {label: rate(r) for label, r in row.items() if "error" not in r}
        trl = {label: value for label, value in done.items() if label.startswith("TRL")}
        mine = {label: value for label, value in done.items() if label.startswith("ours")}
        best, best_ours = (max(d, key=d.get) if d else None for d in (trl, mine))
        ratios[shape] = mine[best_ours] / trl[best] if best and best_ours else float("nan")
        liger = row.get("TRL padding + Liger", {})
        ours_peak = row.get(best_ours, {}).get("peak_gib", float("nan"))
        memory = ours_peak / liger.get("peak_gib", float("nan"))
        print(
            f"{shape:6} best ours ({best_ours}) / best TRL ({best}): {ratios[shape]:.2f}x tokens/s (target "
            f">= 2.0); peak memory ours / TRL padding + Liger: {cell(memory, '.2f')} (target <= 1.0)"
        )
    return ratios


def report_kd(plan: Plan, results: dict) -> tuple[float, float]:
    print(
        f"\nKD: 0.5B student, full (fp32 weights, bf16 autocast), 1.5B teacher, {plan.kd_batch} x "
        f"{plan.kd_length} tokens, 0.5 CE + 0.5 forward KL; steps {plan.kd_warmup + 1}.."
        f"{plan.kd_warmup + plan.kd_steps} timed"
    )
    print(f"{'mode':42} {'step s':>8} {'tok/s':>9} {'peak GiB':>9}")
    step, tokens = {}, {}
    for label, result in results.items():
        if "error" in result:
            print(f"{label:42} failed: {result['error']}")
            step[label], tokens[label] = (float("nan"), float("nan")), float("nan")
            continue
        step[label], tokens[label] = (result["seconds"] / result["steps"], result["peak_gib"]), rate(result)
        print(f"{label:42} {step[label][0]:8.3f} {tokens[label]:9.0f} {cell(step[label][1], '9.1f')}")
    (naive_s, naive_m), (kd_s, kd_m), (sft_s, _), (ckpt_s, ckpt_m), (policy_s, _) = step.values()
    kd_rate, policy_rate = tokens["ours KD"], tokens["ours on-policy KD, fraction 0.5"]
    print(
        f"ours KD / ours SFT time: {kd_s / sft_s:.2f} (target <= 1.5); ours KD / naive: time "
        f"{kd_s / naive_s:.2f}, peak memory {cell(kd_m / naive_m, '.2f')} (target <= 0.5); with gradient "
        f"checkpointing: time / SFT {ckpt_s / sft_s:.2f}, memory / naive {cell(ckpt_m / naive_m, '.2f')}; "
        f"on-policy KD / KD: step time {policy_s / kd_s:.2f}, tokens/s {policy_rate / kd_rate:.2f}"
    )
    return kd_s / sft_s, kd_m / naive_m, policy_rate / kd_rate


def smooth(values: list[float], window: int = 5) -> list[float]:
    half = window // 2
    return [sum(v := values[max(0, i - half) : i + half + 1]) / len(v) for i in range(len(values))]


def report_curve(plan: Plan, sft: dict) -> None:
    row = sft.get("0.5B", {})
    ours, trl = row.get(OURS, {}).get("losses"), row.get("TRL padding", {}).get("losses")
    if not ours or not trl or plan.curve_steps <= 0:
        print("\nloss curve: not measured")
        return
    steps = min(len(ours), len(trl), plan.curve_steps)
    ours_s, trl_s = smooth(ours[:steps]), smooth(trl[:steps])
    diffs = [abs(a - b) / abs(b) for a, b in zip(ours_s, trl_s, strict=True)]
    worst = max(range(steps), key=diffs.__getitem__)
    scatter = (sum((a - b) ** 2 for a, b in zip(trl[:steps], trl_s, strict=True)) / steps) ** 0.5
    print(f"\nLoss curve, 0.5B, ours vs TRL padding on the same {steps} batches from the same weights:")
    print("step " + " ".join(f"{i + 1:>6}" for i in range(0, steps, max(1, steps // 10))))
    for name, values in (("ours", ours), ("TRL", trl)):
        print(f"{name:5}" + " ".join(f"{values[i]:6.3f}" for i in range(0, steps, max(1, steps // 10))))
    verdict = "within noise" if diffs[worst] <= 0.02 else "NOT within noise"
    print(
        f"step 1: ours {ours[0]:.4f} TRL {trl[0]:.4f}; max relative difference of the 5-step moving "
        f"averages {diffs[worst]:.2%} at step {worst + 1} -> {verdict} (<= 2%); TRL's own batch-to-batch "
        f"scatter {scatter / (sum(trl_s) / steps):.2%}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on CPU, fp32: a smoke test")
    parser.add_argument("--shapes", default="0.5B,1.5B")
    parser.add_argument(
        "--sections", default="sft,kd,compile", help="comma-separated: sft, kd, compile (needs sft)"
    )
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps per run (0: the plan's)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per run (0: the plan's)")
    parser.add_argument("--curve-steps", type=int, default=None, help="loss-curve steps (0: no curve)")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds; later runs are skipped")
    parser.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        help="each run in a fresh process (default: on CUDA only)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        job = json.loads(Path(args.child).read_text())
        print("RESULT " + json.dumps(JOBS[job["kind"]](job)), flush=True)
        return
    plan = make_plan(args)
    sections = args.sections.split(",")
    print(f"device {plan.device}, available: {', '.join(plan.have) or 'nothing optional'}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as folder:
        root = Path(folder)
        isolate = plan.device == "cuda" if args.isolate is None else args.isolate
        run = Runner(plan, root, isolate, args.budget)
        # The SFT shapes, and both KD models (0.5B student, 1.5B teacher) when KD runs.
        needed = {*plan.shapes, *(("0.5B", "1.5B") if "kd" in sections else ())}
        shapes = {name: plan.family[name] for name in needed}
        run("models", {"kind": "models", "shapes": shapes, "vocab": plan.vocab})
        sft_count = max(plan.warmup + plan.steps, plan.curve_steps) * plan.batch
        sft_data = make_data(root / "sft", plan, sft_count, seed=1, batch=plan.batch)
        kd_count = (plan.kd_warmup + plan.kd_steps) * plan.kd_batch
        kd_data = make_data(root / "kd", plan, kd_count, seed=2, batch=plan.kd_batch, fixed=plan.kd_length)
        print(
            f"SFT samples: {sft_count}, {sft_data['mean_len']:.0f} tokens on average ({sft_data['min_len']}"
            f"..{sft_data['max_len']}), {sft_data['mean_scored']:.0f} scored"
        )
        sft = sft_section(run, plan, sft_data) if "sft" in sections else {}
        kd = kd_section(run, plan, kd_data) if "kd" in sections else {}
        if "compile" in sections and sft:
            compile_section(run, plan, sft_data, sft)
        ratios = report_sft(plan, sft) if sft else {}
        kd_time, kd_memory, on_policy_rate = report_kd(plan, kd) if kd else (float("nan"),) * 3
        report_curve(plan, sft)
        print(f"\nelapsed {run.elapsed():.0f}s on {plan.device}")
    nan = float("nan")
    print(
        f"sft_ratio_0.5B={ratios.get('0.5B', nan):.3f} sft_ratio_1.5B={ratios.get('1.5B', nan):.3f} "
        f"kd_time_vs_sft={kd_time:.3f} kd_mem_vs_naive={kd_memory:.3f} onpolicy_tokps_vs_kd={on_policy_rate:.3f}"
    )


if __name__ == "__main__":
    main()
