"""Peak memory of the train stage reading stored top-k logprobs: logprobs.parquet against the
logprobs.jsonl the train stage read whole before (the revision TODAY below), side by side.

    python bench/train_logprobs_memory.py                      # 1,000 records each side, minutes
    python bench/train_logprobs_memory.py --records 100000 --jsonl-records 2000 --cap-mb 8000

The bench writes N records of P answer positions with top-K alternatives each (a same-tokenizer teacher:
the tiny byte-level tokenizer's tokens, each position's K candidates with their bytes), the parquet file
through the teacher stage's own writer (components/common/logprobs_file.py) and the JSONL as the teacher
stage wrote it before (one {"schema", "id", "logprobs"} a line). Each reading runs in its own child
process, the same calls as the train stage's source loading with kd.kind topk:

- parquet: read_records, encode_records, then attach_topk streaming read_logprobs (this checkout);
- jsonl: read_records, encode_records, join_logprobs_file then attach_topk, in the checkout of TODAY
  (extracted with git archive), which holds every record's positions as Python objects;
- jsonl streamed: this checkout's reader on the same JSONL (earlier runs' files), printed for reference.

Peak RSS is the child's resident high-water mark while it reads (VmHWM, the counter behind
getrusage's ru_maxrss, reset through /proc/self/clear_refs once torch, transformers and the tokenizer are
loaded, since importing them peaks above a small reading), its interpreter, torch and the tokenizer
included (the `baseline` column: resident just before reading). The parent samples each child's RSS (psutil) and stops
one that passes --cap-mb, printing that it did; `--jsonl-records` sets the JSONL side's scale separately,
since the JSONL path at the full scale needs far more memory than one machine has. Every line says the
scale it ran at. Last line: `peak_mb_parquet= peak_mb_jsonl= bytes_per_position=` (parquet file bytes
per stored position, at --records).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
# The last revision whose train stage joined logprobs.jsonl into the records whole.
TODAY = "b8b8cc207c7ee1624c6bfe0742f24660b2f7243d"
PROMPT = [{"role": "user", "content": "Write some letters."}]
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def write_data(folder: Path, records: int, positions: int, k: int, kind: str, tokenizer) -> None:
    """train.jsonl and the logprobs (`kind` parquet or jsonl) of `records` synthetic answers."""
    sys.path.insert(0, str(ROOT))
    from components.common.logprobs_file import JSONL_NAME, PARQUET_NAME, LogprobsWriter
    from components.common.records import Record, write_records
    from components.common.token_bytes import token_bytes

    table = token_bytes(tokenizer)
    letter_ids = [table.id_of[c.encode()] for c in LETTERS]
    others = [i for i in table.of_id if i not in tokenizer.all_special_ids]
    # The sampled token holds 0.9 of the mass, candidate r after it half of what is left: under 1 in all.
    rest = [-0.1] + [math.log((1 - math.exp(-0.1)) / 2**r) for r in range(1, k)]
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    answers = []
    with (
        LogprobsWriter(folder / PARQUET_NAME) as writer,
        (folder / JSONL_NAME).open("w", encoding="utf-8") as jsonl,
    ):
        for number in range(records):
            ids = [rng.choice(letter_ids) for _ in range(positions)]
            stored = []
            for index in ids:
                top = [index] + [i for i in rng.sample(others, k) if i != index][: k - 1]
                stored.append(table.position(index, -0.1, list(zip(top, rest, strict=False))).to_dict())
            record_id = f"r{number:07d}"
            if kind == "parquet":
                writer.add(record_id, stored)
            else:
                jsonl.write(json.dumps({"schema": 1, "id": record_id, "logprobs": stored}) + "\n")
            answer = b"".join(table.of_id[i] for i in ids).decode()
            answers.append(Record(record_id, [*PROMPT, {"role": "assistant", "content": answer}]))
    if kind == "parquet":
        (folder / JSONL_NAME).unlink()
    write_records(folder / "train.jsonl", answers)


def resident_mb(field: str) -> float:
    """VmRSS (resident now) or VmHWM (the peak since the last reset, what getrusage's ru_maxrss reads
    for a process that did not exec) of this process, in MB."""
    for status_line in Path("/proc/self/status").read_text().splitlines():
        if status_line.startswith(field + ":"):
            return int(status_line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def read_in_child(reader: str, folder: Path, tokenizer_dir: Path, code: Path) -> None:
    """The train stage's reading of `folder` by `reader` (parquet/streamed: this checkout, jsonl: TODAY's
    at `code`); prints one JSON line of figures."""
    sys.path.insert(0, str(code))
    from transformers import AutoTokenizer

    from components.common.records import read_records
    from components.train.data import Encoder, encode_records

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    # The peak from here on: importing torch and transformers peaks above what reading a small file adds.
    Path("/proc/self/clear_refs").write_text("5")
    baseline = resident_mb("VmRSS")
    start = time.perf_counter()
    records = read_records(folder / "train.jsonl")
    examples = encode_records(Encoder(tokenizer, 4096), records)
    if reader == "jsonl":
        from components.train.sparse_kd import attach_topk, join_logprobs_file

        join_logprobs_file(records, folder / "logprobs.jsonl")
        counts = attach_topk(examples, records, tokenizer)
    else:
        from components.common.logprobs_file import read_logprobs
        from components.train.sparse_kd import attach_topk

        counts = attach_topk(examples, records, tokenizer, read_logprobs(folder))
    figures = {
        "peak_mb": resident_mb("VmHWM"),
        "baseline_mb": baseline,
        "seconds": time.perf_counter() - start,
        "matched": counts.matched_positions,
        "mean_candidates": counts.mean_candidates,
    }
    print(json.dumps(figures))


def measure(reader: str, folder: Path, tokenizer_dir: Path, code: Path, cap_mb: float) -> dict:
    """Runs one reading in a child; {"capped": True, "peak_mb": cap} when it passed the cap."""
    command = [sys.executable, __file__, "--child", reader, str(folder), str(tokenizer_dir), str(code)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    watched = psutil.Process(child.pid)
    while child.poll() is None:
        try:
            rss_mb = watched.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            break
        if rss_mb > cap_mb:
            child.kill()
            child.wait()
            return {"capped": True, "peak_mb": cap_mb}
        time.sleep(0.05)
    out, _ = child.communicate()
    if child.returncode:
        raise SystemExit(f"the {reader} reading failed (exit {child.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def today_checkout(scratch: Path) -> Path:
    """The components package of TODAY, from this repository's history."""
    archive = scratch / "today.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), TODAY, "components"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(scratch / "today", filter="data")
    return scratch / "today"


def line(name: str, records: int, args, figures: dict) -> str:
    scale = f"{records} records x {args.positions} positions x top-{args.k}"
    if figures.get("capped"):
        return f"{name:<36} {scale}: stopped at the cap, RSS passed {figures['peak_mb']:.0f} MB"
    return (
        f"{name:<36} {scale}: peak {figures['peak_mb']:.0f} MB (baseline {figures['baseline_mb']:.0f} MB), "
        f"{figures['seconds']:.0f} s, {figures['matched']} positions matched, "
        f"{figures['mean_candidates']:.2f} candidates each"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1000, help="the parquet side's records")
    parser.add_argument("--jsonl-records", type=int, help="the JSONL sides' records (default: --records)")
    parser.add_argument("--positions", type=int, default=256)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--cap-mb", type=float, default=8000, help="stop a reading whose RSS passes this")
    args = parser.parse_args()
    jsonl_records = args.jsonl_records or args.records
    sys.path.insert(0, str(ROOT))
    from components.common.tiny_model import build_tokenizer

    with tempfile.TemporaryDirectory(prefix="bench-logprobs-") as scratch:
        scratch = Path(scratch)
        tokenizer = build_tokenizer()
        tokenizer.save_pretrained(scratch / "tokenizer")
        write_data(scratch / "parquet", args.records, args.positions, args.k, "parquet", tokenizer)
        write_data(scratch / "jsonl", jsonl_records, args.positions, args.k, "jsonl", tokenizer)
        parquet_bytes = (scratch / "parquet" / "logprobs.parquet").stat().st_size
        jsonl_bytes = (scratch / "jsonl" / "logprobs.jsonl").stat().st_size
        today = today_checkout(scratch)
        parquet = measure("parquet", scratch / "parquet", scratch / "tokenizer", ROOT, args.cap_mb)
        jsonl = measure("jsonl", scratch / "jsonl", scratch / "tokenizer", today, args.cap_mb)
        streamed = measure("streamed", scratch / "jsonl", scratch / "tokenizer", ROOT, args.cap_mb)
    per_position = parquet_bytes / (args.records * args.positions)
    print(line("parquet (this checkout)", args.records, args, parquet))
    print(line(f"jsonl (train stage at {TODAY[:9]})", jsonl_records, args, jsonl))
    print(line("jsonl streamed (this checkout)", jsonl_records, args, streamed))
    print(
        f"file bytes per position: parquet {per_position:.1f} ({args.records} records), "
        f"jsonl {jsonl_bytes / (jsonl_records * args.positions):.1f} ({jsonl_records} records)"
    )
    jsonl_mb = f">{jsonl['peak_mb']:.0f}" if jsonl.get("capped") else f"{jsonl['peak_mb']:.0f}"
    print(
        f"peak_mb_parquet={parquet['peak_mb']:.0f} peak_mb_jsonl={jsonl_mb} bytes_per_position={per_position:.1f}"
    )


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        read_in_child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
    else:
        main()
