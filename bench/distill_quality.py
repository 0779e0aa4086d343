"""Distillation quality at equal steps: SFT, logit KD, stored top-k KD, on-policy KD and cross-tokenizer KD.

On CPU, in minutes (2 cores):

    python bench/distill_quality.py                 # the table
    python bench/distill_quality.py --smoke         # every method runs once on a few steps, numbers meaningless
    python bench/distill_quality.py --warm-start 500 --steps 500 --seeds 6 --methods sft,kd,topk,onpolicy
    python bench/distill_quality.py --teacher-temperature 1.0    # the teacher's answers sampled, not greedy

The third form starts every method from the same student, SFT'd for the first 500 steps, as on-policy
distillation is used in practice (GKD starts from a fine-tuned student): from random initialisation,
half of each on-policy batch is at first the student's noise.

The comparison means something only once the teacher is competent: its held-out exact match is printed
first, with a warning below COMPETENT; raise --teacher-steps until it passes.

The task is addition of two numbers (`--digits` digits each), "Add: 47+85" -> "132". The bench first
trains the teacher itself (a tiny Qwen2, full fine-tuning through the train stage on gold answers) until it
is competent. Then every method's records come out of the product's own stages: the trained teacher is
served on a loopback OpenAI-compatible endpoint (pipelines/model_teacher.py) that returns top-k logprobs
with their bytes, the teacher stage asks it every training prompt (answers sampled at
--teacher-temperature, 1.0 by default, as API teachers answer) and writes train.jsonl and logprobs.parquet,
and a smaller student (random init) is trained on that folder through the train stage with each method,
the same steps, batch, learning rate and seeds:

    sft        cross-entropy on the teacher's answers
    kd         0.5 CE + 0.5 forward KL against the local teacher's full distribution (kd.kind logits)
    topk       0.5 CE + 0.5 sparse KL against the stored top-k (kd.kind topk)
    onpolicy   as kd, with half of each batch's answers sampled by the student (kd.kind on_policy), from its
               warm start: the first --onpolicy-warm-start share of the steps is SFT
    xtok       topk into a student whose tokenizer merges digit pairs ("57" is one token): the stored
               top-k aligned by byte spans (cross_tokenizer.py); `xtok_sft` is that student's SFT, its peer

Each seed draws its own student initialisation and data order. Reported per method, over the seeds:
exact match of the student's greedy answer on held-out problems after the last step (mean, standard
deviation, how many seeds learned the task: exact match of at least LEARNED), the same exact match
averaged along training (scored CURVE_POINTS times with the weights of the moment; greedy decoding draws no
random numbers, so the training is the unscored one's), the step at which each seed learned, and the
seconds per run. A run either finds the carry rule and then gets most problems right, or stays near the
exact match of answering without it: the final figure mostly says whether a seed got there within the
steps, the averaged one also how early.
Last line: `sft= kd= topk= onpolicy= xtok= xtok_sft= seeds= topk_candidates= via=stages` (final exact
match, means; topk_candidates: the teacher candidates per aligned position the train stage saw in the topk
runs, from train_summary.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.common.config import from_dict  # noqa: E402
from components.common.logprobs_file import read_logprobs  # noqa: E402
from components.common.model_loading import left_padded  # noqa: E402
from components.common.records import Record, read_records, record_id, write_records  # noqa: E402
from components.common.tiny_model import make_tiny_model  # noqa: E402
from components.teacher import Config as TeacherConfig  # noqa: E402
from components.teacher.stage import run as run_teacher  # noqa: E402
from components.train import Config  # noqa: E402
from components.train.modeling import padded_attention  # noqa: E402
from components.train.stage import run  # noqa: E402
from components.train.trainer import DistillTrainer  # noqa: E402
from pipelines.model_teacher import start_model_teacher  # noqa: E402

TEACHER = {"provider": "bench", "model": "adder"}
# Held-out exact match from which the teacher's answers are mostly right, so that distilling them can help.
COMPETENT = 0.9
# A student with this held-out exact match has found the carry rule (runs that have not stay near 0.1).
LEARNED = 0.5
# Held-out exact match is scored this many times along each student's training.
CURVE_POINTS = 20
METHODS = ["sft", "kd", "topk", "onpolicy", "xtok_sft", "xtok"]
# The students' tokenizers, as tiny:// options: the teacher's, or one that merges digit pairs ("57").
STUDENT_TOKENIZERS = {"plain": "", "merged": "&merges=100"}


def problems(count: int, digits: int, seed: int, exclude: set[str] = frozenset()) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out, seen = [], set(exclude)
    low, high = 10 ** (digits - 1), 10**digits - 1
    while len(out) < count:
        a, b = rng.randint(low, high), rng.randint(low, high)
        prompt = f"Add: {a}+{b}"
        if prompt not in seen:
            seen.add(prompt)
            out.append((prompt, str(a + b)))
    return out


def record(prompt: str, answer: str, extra: dict | None = None) -> Record:
    messages = [{"role": "user", "content": prompt}]
    return Record(
        id=record_id(messages, TEACHER),
        messages=[*messages, {"role": "assistant", "content": answer}],
        teacher=TEACHER,
        split="train",
        extra=extra or {},
    )


def train_config(model_dir: Path, data_dir: Path, out: Path, steps: int, lr: float, seed: int, **settings):
    return from_dict(
        Config,
        {
            "student_dir": str(model_dir),
            "data_dir": str(data_dir),
            "output_dir": str(out),
            "tensorboard_dir": str(out / "tb"),
            "method": "full",
            "max_steps": steps,
            "batch_size": 32,
            "learning_rate": lr,
            "warmup_ratio": 0.05,
            "logging_steps": max(1, steps // 4),
            "max_length": 64,
            "seed": seed,
            "precision": "fp32",
            **settings,
        },
    )


def train(model_dir: Path, data_dir: Path, out: Path, steps: int, lr: float, seed: int, **settings) -> Path:
    """The train stage, as the pipeline runs it."""
    run(train_config(model_dir, data_dir, out, steps, lr, seed, **settings))
    return out


class ScoredTrainer(DistillTrainer):
    """The train stage's trainer, scoring held-out exact match every `every` optimizer steps on the way."""

    def __init__(self, config, held_out: list[tuple[str, str]], every: int, max_new_tokens: int):
        super().__init__(config)
        self.held_out, self.every, self.max_new_tokens = held_out, every, max_new_tokens
        self.steps_done = 0
        self.curve: list[float] = []

    def loss_step(self, phase, micro_batches):
        stats = super().loss_step(phase, micro_batches)
        self.steps_done += 1
        if self.steps_done % self.every == 0:
            self.student.eval()
            # Greedy decoding draws no random numbers: the training that follows is the unscored one's.
            with padded_attention(self.student):
                self.curve.append(score(self.student, self.tokenizer, self.held_out, self.max_new_tokens))
            self.student.train()
        return stats


def train_scored(config, held_out, every: int, max_new_tokens: int) -> list[float]:
    """Train like the stage does and return held-out exact match after every `every` steps."""
    trainer = ScoredTrainer(config, held_out, every, max_new_tokens)
    trainer.setup()
    trainer.save(trainer.train())
    return trainer.curve


def load(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
    model.eval()
    return model, tokenizer


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    out = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@torch.no_grad()
def answers(
    model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 0.0, batch: int = 128
) -> list[str]:
    """Greedy answers (sampled ones at `temperature` > 0), batched with left padding."""
    decoding = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    out = []
    for start in range(0, len(prompts), batch):
        padded = left_padded(
            [prompt_ids(tokenizer, p) for p in prompts[start : start + batch]], tokenizer.pad_token_id
        )
        width = padded["input_ids"].shape[1]
        generated = model.generate(
            **padded,
            max_new_tokens=max_new_tokens,
            **(decoding if temperature > 0 else {"do_sample": False}),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        out += [tokenizer.decode(g[width:], skip_special_tokens=True).strip() for g in generated]
    return out


def score(model, tokenizer, held_out: list[tuple[str, str]], max_new_tokens: int) -> float:
    """Held-out exact match of the model's greedy answers."""
    got = answers(model, tokenizer, [p for p, _ in held_out], max_new_tokens)
    return sum(g == a for g, (_, a) in zip(got, held_out, strict=True)) / len(held_out)


def exact_match(model_dir: Path, held_out: list[tuple[str, str]], max_new_tokens: int) -> float:
    return score(*load(model_dir), held_out, max_new_tokens)


def teacher_dataset(
    teacher_dir: Path, train_problems, work: Path, max_new_tokens: int, k: int, temperature: float
) -> tuple[Path, float, float]:
    """The teacher dataset as a user gets it: the trained teacher served on a loopback OpenAI-compatible
    endpoint (pipelines/model_teacher.py) and asked for every training prompt by the teacher stage, with
    top-k logprobs and their bytes, answers sampled at `temperature` as an API teacher's are. Returns the
    stage's output folder, how often the teacher was right and the median probability it gave the tokens
    it wrote (near 1: its text says what its distribution does)."""
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p, _ in train_problems))
    folder = work / "teacher-data"
    with start_model_teacher(teacher_dir, model="adder") as server:
        config = from_dict(
            TeacherConfig,
            {
                "dataset": str(prompts),
                "output_dir": str(folder),
                "store_uri": str(work / "teacher-store"),
                "progress_bar": False,
                "dedup": False,
                "test_ratio": 0.0,
                "on_length": "keep",
                "on_empty": "keep",
                "use_cache": False,
                "concurrency": 64,
                "provider": {
                    "name": "vllm",
                    "base_url": server.base_url,
                    "model": "adder",
                    "temperature": temperature,
                    "max_tokens": max_new_tokens,
                    "logprobs": True,
                    "top_logprobs": k,
                },
            },
        )
        run_teacher(config)
    records = read_records(folder / "train.jsonl")
    gold = dict(train_problems)
    right = sum(r.answer == gold[r.prompt_messages[-1]["content"]] for r in records) / len(train_problems)
    ids = {r.id for r in records}
    own = [math.exp(p["logprob"]) for i, stored in read_logprobs(folder) if i in ids for p in stored]
    return folder, right, statistics.median(own) if own else float("nan")


TEACHER_MODEL = "tiny://qwen2?warmup_steps=0&layers=2&hidden=128&heads=4&kv_heads=2&intermediate=256"


def code_digest() -> str:
    """A digest of the code that trains, serves and records the teacher: a change to it (a new record
    layout, say) must not reuse what the earlier code made."""
    digest = hashlib.sha256()
    for folder in ("components/common", "components/teacher", "components/train", "pipelines"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def trained_teacher(folder: Path, args, train_problems, held_out, answer_tokens):
    """The teacher trained on gold answers and the teacher stage's records of it, with its figures, from
    `folder`/teacher-<digest of their settings> when an earlier run left them there. Every seed's
    students learn from these same records: the seeds vary the students, not the teacher. The key holds the
    settings and the code's digest."""
    settings = {
        "model": TEACHER_MODEL,
        "digits": args.digits,
        "steps": args.teacher_steps,
        "lr": args.teacher_lr,
        "train": args.train,
        "held_out": args.held_out,
        "top_k": args.top_k,
        "temperature": args.teacher_temperature,
        "code": code_digest(),
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    here = folder / f"teacher-{key}"
    figures = here / "figures.json"
    if figures.is_file():
        kept = json.loads(figures.read_text())
        return here / "model", here / "teacher-data", *kept, True
    if here.exists():
        shutil.rmtree(here)  # an earlier run stopped before its figures: start over
    gold = here / "gold"
    write_records(gold / "train.jsonl", [record(p, a) for p, a in train_problems])
    write_records(gold / "test.jsonl", [])
    make_tiny_model(TEACHER_MODEL, here / "init")
    teacher = train(here / "init", gold, here / "model", args.teacher_steps, args.teacher_lr, seed=0)
    teacher_em = exact_match(teacher, held_out, answer_tokens)
    data, right, certainty = teacher_dataset(
        teacher, train_problems, here, answer_tokens, args.top_k, args.teacher_temperature
    )
    figures.write_text(json.dumps([teacher_em, right, certainty]))
    return teacher, data, teacher_em, right, certainty, False


def method_settings(method: str, teacher_dir: Path, on_policy_tokens: int) -> dict:
    teacher = {"teacher_dir": str(teacher_dir), "alpha": 0.5}
    return {
        "sft": {},
        "xtok_sft": {},
        "kd": {"kd": {"kind": "logits", **teacher}},
        "topk": {"kd": {"kind": "topk", "alpha": 0.5}},
        "xtok": {"kd": {"kind": "topk", "alpha": 0.5}},
        "onpolicy": {
            "kd": {
                "kind": "on_policy",
                **teacher,
                "on_policy": {"fraction": 0.5, "temperature": 1.0, "max_new_tokens": on_policy_tokens},
            }
        },
    }[method]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every method runs")
    parser.add_argument("--digits", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1500, help="student optimizer steps, every method")
    parser.add_argument("--teacher-steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--train", type=int, default=1000, help="training prompts")
    parser.add_argument("--held-out", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3, help="students' learning rate")
    parser.add_argument("--teacher-lr", type=float, default=1e-3)
    parser.add_argument(
        "--teacher-temperature",
        type=float,
        default=1.0,
        help="sample the teacher's answers at this temperature (0: greedy), as API teachers answer",
    )
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--warm-start",
        type=int,
        default=0,
        help="first SFT each seed's student for this many steps; every method then continues from it",
    )
    parser.add_argument(
        "--onpolicy-warm-start",
        type=float,
        default=0.5,
        help="with no --warm-start, the share of --steps on-policy KD spends on SFT first (its warm start, "
        "as GKD starts from a fine-tuned student), the rest on-policy: the same steps in all",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads: more than the cores free makes each step many times slower (OpenMP threads "
        "spin waiting for each other), and these models are too small to gain from a second",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the trained teacher and its records here, keyed by their settings, for the next run "
        "(default: a temporary folder, nothing kept)",
    )
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.teacher_steps, args.seeds, args.train, args.held_out = 4, 4, 1, 64, 16
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    answer_tokens = args.digits + 3  # the sum's digits and the end-of-turn token, with room to spare

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="distill-quality-") as scratch:
        work = Path(scratch)
        train_problems = problems(args.train, args.digits, seed=0)
        held_out = problems(args.held_out, args.digits, seed=1, exclude={p for p, _ in train_problems})
        teacher, data, teacher_em, teacher_right, certainty, cached = trained_teacher(
            args.workdir or work, args, train_problems, held_out, answer_tokens
        )
        print(
            f"teacher: {args.teacher_steps} steps, held-out exact match {teacher_em:.3f}, right on "
            f"{teacher_right:.3f} of its training answers, median probability of its own answer tokens "
            f"{certainty:.3f} ({'kept from ' + str(teacher.parent) + ', ' if cached else ''}"
            f"{time.monotonic() - started:.0f} s)",
            flush=True,
        )
        if teacher_em < COMPETENT and not args.smoke:
            print(
                f"warning: the teacher is below {COMPETENT} exact match; the students learn from wrong answers "
                "and the comparison says little: raise --teacher-steps",
                flush=True,
            )

        student = "tiny://qwen2?warmup_steps=0&layers=2&hidden=64&heads=4&kv_heads=2&intermediate=128"
        runs: dict[str, list[StudentRun]] = {m: [] for m in methods}
        for seed in range(args.seeds):
            inits = {}
            for kind in sorted({student_tokenizer(m) for m in methods}):
                inits[kind] = work / f"student-{kind}-init-{seed}"
                make_tiny_model(f"{student}&seed={seed}{STUDENT_TOKENIZERS[kind]}", inits[kind])
            if args.warm_start:
                inits = warm_students(inits, data, args, seed, held_out, answer_tokens)
            for method in methods:
                init, steps = inits[student_tokenizer(method)], args.steps
                out = work / f"{method}-{seed}"
                settings = method_settings(method, teacher, answer_tokens)
                began = time.monotonic()
                if method == "onpolicy" and not args.warm_start:
                    warm_steps = round(args.steps * args.onpolicy_warm_start)
                    init = train(init, data, work / f"onpolicy-warm-{seed}", warm_steps, args.lr, seed)
                    steps = args.steps - warm_steps
                config = train_config(init, data, out, steps, args.lr, seed, **settings)
                curve = train_scored(config, held_out, max(1, steps // CURVE_POINTS), answer_tokens)
                alignment = json.loads((out / "train_summary.json").read_text()).get("kd_alignment") or {}
                done = StudentRun(
                    exact_match(out, held_out, answer_tokens),
                    curve,
                    max(1, steps // CURVE_POINTS),
                    time.monotonic() - began,
                    args.steps - steps,
                    alignment.get("mean_candidates"),
                )
                runs[method].append(done)
                print(f"  seed {seed} {method:9} {done.describe()}", flush=True)

    warm = f"after {args.warm_start} steps of SFT, " if args.warm_start else ""
    print(
        f"\n{args.digits}-digit addition, {warm}{args.steps} student steps x batch 32, {args.seeds} seeds, "
        f"{len(held_out)} held-out problems; teacher exact match {teacher_em:.3f}"
    )
    means = report(runs)
    per_seed(runs)
    print(f"total {time.monotonic() - started:.0f} s")
    keys = ["sft", "kd", "topk", "onpolicy", "xtok", "xtok_sft"]
    candidates = [r.candidates for r in runs.get("topk", []) if r.candidates is not None]
    print(
        " ".join(f"{k}={means[k]:.3f}" if k in means else f"{k}=nan" for k in keys)
        + f" seeds={args.seeds} topk_candidates="
        + (f"{statistics.mean(candidates):.2f}" if candidates else "nan")
        + " via=stages"
    )


def student_tokenizer(method: str) -> str:
    """Which of STUDENT_TOKENIZERS the method's student has."""
    return "merged" if method.startswith("xtok") else "plain"


def warm_students(inits: dict[str, Path], data: Path, args, seed: int, held_out, answer_tokens):
    """Each student (plain or merged tokenizer) SFT'd for args.warm_start steps: where every method starts."""
    warm = {}
    for kind in inits:
        warm[kind] = train(
            inits[kind], data, inits[kind].with_name(f"warm-{kind}-{seed}"), args.warm_start, args.lr, seed
        )
        score = exact_match(warm[kind], held_out, answer_tokens)
        print(
            f"  seed {seed} warm start ({kind} tokenizer): SFT {args.warm_start} steps, exact match {score:.3f}",
            flush=True,
        )
    return warm


@dataclass
class StudentRun:
    exact_match: float  # of the saved model, after the last step
    curve: list[float]  # exact match after every `every` steps
    every: int
    seconds: float
    warm_steps: int = 0  # SFT steps before the curve starts (on-policy's warm start)
    candidates: float | None = None  # teacher candidates per aligned position, as the train stage saw them

    def learned_at(self) -> int | None:
        """The first scored step at which the student had learned the task (warm-start steps included)."""
        return next(
            ((i + 1) * self.every + self.warm_steps for i, v in enumerate(self.curve) if v >= LEARNED), None
        )

    def along(self) -> float:
        """Exact match averaged over the scored steps: higher when the task is learned earlier."""
        return statistics.mean(self.curve) if self.curve else self.exact_match

    def describe(self) -> str:
        step = self.learned_at()
        return (
            f"exact match {self.exact_match:.3f}, along training {self.along():.3f}, "
            f"{'learned at step ' + str(step) if step else 'not learned'} ({self.seconds:.0f} s)"
        )


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def report(runs: dict[str, list[StudentRun]]) -> dict[str, float]:
    """Print the table; return each method's mean final exact match."""
    print(
        f"{'method':10} {'exact match':>11} {'std':>6} {'learned':>8} {'along training':>15} {'std':>6} "
        f"{'learned at step':>18} {'s/run':>6}"
    )
    means = {}
    for method, done in runs.items():
        final = [r.exact_match for r in done]
        along = [r.along() for r in done]
        means[method] = statistics.mean(final)
        learned = f"{sum(v >= LEARNED for v in final)}/{len(final)}"
        steps = ",".join(str(r.learned_at() or "-") for r in done)
        print(
            f"{method:10} {means[method]:11.3f} {spread(final):6.3f} {learned:>8} "
            f"{statistics.mean(along):15.3f} {spread(along):6.3f} {steps:>18} "
            f"{statistics.mean(r.seconds for r in done):6.0f}"
        )
    return means


def per_seed(runs: dict[str, list[StudentRun]]) -> None:
    """Each seed's final exact match per method, one row a seed."""
    print("\nfinal exact match per seed:")
    print(f"{'seed':>4} " + " ".join(f"{m:>9}" for m in runs))
    for seed in range(max(len(done) for done in runs.values())):
        print(f"{seed:>4} " + " ".join(f"{done[seed].exact_match:9.3f}" for done in runs.values()))


if __name__ == "__main__":
    main()
