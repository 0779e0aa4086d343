"""Raw-text datasets: seconds per MB of the teacher's reader (read, split into sentences, chunk, render each
chunk through the prompt template) at growing sizes, on one core.

    python bench/teacher_chunking.py [--sizes 4 8 16] [--full]

The peer is the same reader on the smallest size: a linear reader spends the same time per MB at every
size, so the ratio of the largest size's seconds per MB to the smallest's stays near 1 (a quadratic one
doubles it with each doubling).
--full also reads 100 MB, the target being under 60 s. The text mixes English and Chinese sentences and
blank lines. Last line: the ratio and the seconds per MB.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from components.common.config import from_dict
from components.teacher import Config
from components.teacher.readers import read_prompts

SENTENCES = [
    "Distillation moves knowledge from a large model into a small one. ",
    "The student learns from the teacher's answers rather than from labels alone! ",
    "知识蒸馏把大模型的能力迁移到小模型。",
    "学生模型学习教师模型的回答。",
    "Does it work on raw text?\n",
    "It does; every chunk ends on a sentence boundary.\n\n",
]


def write_text(path: Path, megabytes: float, seed: int = 0) -> None:
    rng = random.Random(seed)
    target = int(megabytes * 1_000_000)
    with path.open("w", encoding="utf-8") as handle:
        written = 0
        while written < target:
            block = "".join(rng.choice(SENTENCES) for _ in range(1000))
            handle.write(block)
            written += len(block.encode("utf-8"))


def seconds_to_read(path: Path) -> tuple[float, int]:
    config = from_dict(
        Config,
        {
            "dataset": str(path),
            "dataset_format": "text",
            "output_dir": "/tmp/unused",
            "text": {"chunk_chars": 1000, "overlap_chars": 200},
        },
    )
    began = time.perf_counter()
    count = sum(1 for _ in read_prompts(config))
    return time.perf_counter() - began, count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=float, nargs="+", default=[4, 8, 16], help="text sizes in MB")
    parser.add_argument("--full", action="store_true", help="also read 100 MB")
    args = parser.parse_args(argv)
    sizes = sorted(args.sizes) + ([100.0] if args.full else [])
    per_mb: dict[float, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-chunking-") as folder:
        for size in sizes:
            path = Path(folder) / f"text-{size:g}mb.txt"
            write_text(path, size)
            megabytes = path.stat().st_size / 1_000_000
            seconds, chunks = seconds_to_read(path)
            per_mb[size] = seconds / megabytes
            print(
                f"{megabytes:6.1f} MB: {seconds:7.2f} s, {per_mb[size]:.3f} s/MB, {chunks} prompts, "
                f"s/MB over the {sizes[0]:g} MB peer {per_mb[size] / per_mb[sizes[0]]:.2f}",
                file=sys.stderr,
            )
            path.unlink()
    largest = max(args.sizes)
    figures = {
        f"ratio_s_per_mb_{largest:g}mb_over_{sizes[0]:g}mb": per_mb[largest] / per_mb[sizes[0]],
        f"s_per_mb_{largest:g}mb": per_mb[largest],
    }
    if args.full:
        figures["s_100mb"] = per_mb[100.0] * 100
    print(" ".join(f"{key}={value:.3f}" for key, value in figures.items()))


if __name__ == "__main__":
    main()
