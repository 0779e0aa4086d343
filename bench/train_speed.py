"""Per-step cost of the train stage against a plain PyTorch loop doing the same LoRA SFT, same machine.

    python bench/train_speed.py [--steps 40] [--batch 32] [--rounds 5]

The peer is a plain loop written here (pad the batch, `model(..., labels=...)`, AdamW, no extras)
on the same tiny student, records and LoRA shape. The two alternate in rounds so that load from other
processes on a shared machine hits both alike; the headline is the median of the per-round ratios.
Last line: key=value headline figures.
"""

from __future__ import annotations

import argparse
import random
import string
import sys
import tempfile
import time
from pathlib import Path

import torch

from components.common.config import from_dict
from components.common.records import Record, record_id, write_records
from components.common.tiny_model import make_tiny_model
from components.train import Config
from components.train.batching import BatchStream, collate
from components.train.data import Encoder, encode_records
from components.train.stage import run


def records(count: int) -> list[Record]:
    rng = random.Random(0)
    out = []
    for _ in range(count):
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 6)))
        prompt = [{"role": "user", "content": f"Reverse the letters of: {word}"}]
        out.append(Record(record_id(prompt, {}), [*prompt, {"role": "assistant", "content": word[::-1]}]))
    return out


def plain_loop(student_dir: Path, data: list[Record], steps: int, batch: int) -> float:
    """The peer: seconds for `steps` steps of a bare LoRA loop."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    examples = encode_records(Encoder(tokenizer, 256), data)
    model = AutoModelForCausalLM.from_pretrained(student_dir)
    model = get_peft_model(
        model, LoraConfig(r=64, lora_alpha=128, target_modules="all-linear", lora_dropout=0.05)
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    stream = BatchStream(examples, batch, 0, False)
    model.train()
    started = time.perf_counter()
    for step in range(steps):
        b = collate(stream.get(step), tokenizer.pad_token_id, "padded", 256)
        loss = model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - started


def stage_run(student_dir: Path, data_dir: Path, out: Path, steps: int, batch: int) -> float:
    config = from_dict(
        Config,
        {
            "student_dir": str(student_dir),
            "data_dir": str(data_dir),
            "output_dir": str(out / "model"),
            "tensorboard_dir": str(out / "tb"),
            "max_steps": steps,
            "batch_size": batch,
            "learning_rate": 2e-3,
            "lora": {"r": 64, "alpha": 128},
            "logging_steps": 10,
            "max_length": 256,
        },
    )
    return run(config).train_seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as folder:
        root = Path(folder)
        make_tiny_model("tiny://qwen2?warmup_steps=0", root / "student")
        data = records(512)
        write_records(root / "data" / "train.jsonl", data)
        plain, stage = [], []
        for i in range(args.rounds):
            plain.append(plain_loop(root / "student", data, args.steps, args.batch))
            stage.append(stage_run(root / "student", root / "data", root / f"run{i}", args.steps, args.batch))
            print(f"round {i}: plain {plain[-1]:.2f}s stage {stage[-1]:.2f}s", file=sys.stderr)
    # Each round's two runs are neighbours in time: their ratio is the figure least moved by other load.
    ratios = sorted(s / p for s, p in zip(stage, plain, strict=True))
    median = (
        ratios[len(ratios) // 2]
        if len(ratios) % 2
        else sum(ratios[len(ratios) // 2 - 1 : len(ratios) // 2 + 1]) / 2
    )
    print(
        f"steps={args.steps} batch={args.batch} plain_s_per_step={min(plain) / args.steps:.4f} "
        f"stage_s_per_step={min(stage) / args.steps:.4f} stage_over_plain_median={median:.3f} "
        f"stage_over_plain_best={min(stage) / min(plain):.3f}"
    )


if __name__ == "__main__":
    main()
