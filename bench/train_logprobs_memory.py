"""Peak memory and time of the train stage reading stored top-k logprobs: logprobs.parquet against the
logprobs.jsonl the train stage read whole before (the revision TODAY below), side by side.

    python bench/train_logprobs_memory.py          # parquet at 100,000 records, JSONL at 1,000: minutes
    python bench/train_logprobs_memory.py --records 3000 --jsonl-records 1000

The bench makes answers of P positions with top-K alternatives each (a same-tokenizer teacher: the tiny
byte-level tokenizer's tokens, each position's K candidates with their bytes). The parquet file is the
teacher stage's own writer's (components/common/logprobs_file.py): it writes --distinct records (about
40 ms each, so not all 100k), then the file repeats its row groups, unchanged but for the record ids,
until it holds --records records; row groups are compressed on their own, so bytes per position are the
writer's. The JSONL is written as the teacher stage wrote it before (one {"schema", "id", "logprobs"} a
line), its lines repeating the same way. Each reading runs in its own child process, the same calls as
the train stage's source loading with kd.kind topk:

- parquet: read_records, encode_records, then attach_topk streaming stream_logprobs into the top-k store
  (this checkout);
- jsonl: read_records, encode_records, join_logprobs_file then attach_topk, in the checkout of TODAY
  (extracted with git archive), which holds every record's positions as Python objects;
- jsonl streamed: this checkout's reader on the same JSONL (earlier runs' files), printed for reference.

Peak RSS is the child's resident high-water mark while it reads (VmHWM, the counter behind
getrusage's ru_maxrss, reset through /proc/self/clear_refs once torch, transformers and the tokenizer are
loaded, since importing them peaks above a small reading), its interpreter, torch and the tokenizer
included (`baseline`: resident just before reading; `with the records encoded`: resident once train.jsonl
is read and encoded, the examples the train stage keeps whatever the logprobs); seconds are the reading's, from
read_records to the last aligned record. The parent samples each child's RSS (psutil) and stops one
that passes --cap-mb, printing that it did. The JSONL path cannot run at the full scale on one machine
(about 1,360 bytes a position: a 35 GB file, held whole as Python objects), so --jsonl-records sets its
scale; the bench prints its peak per record above the baseline and, marked as such, what that gives at
--records: an extrapolation, not a measurement. Every line says the scale it ran at. Last line:
`peak_mb_parquet= peak_mb_jsonl= bytes_per_position=` (parquet file bytes per stored position), then
each side's records and reading seconds.
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


def record_id(number: int) -> str:
    return f"r{number:07d}"


def answers(count: int, positions: int, k: int, tokenizer) -> list[tuple[str, list[dict]]]:
    """`count` synthetic answers: (text, its positions in the contract's dict shape)."""
    sys.path.insert(0, str(ROOT))
    from components.common.token_bytes import token_bytes

    table = token_bytes(tokenizer)
    letter_ids = [table.id_of[c.encode()] for c in LETTERS]
    others = [i for i in table.of_id if i not in tokenizer.all_special_ids]
    # The sampled token holds 0.9 of the mass, candidate r after it half of what is left: under 1 in all.
    rest = [-0.1] + [math.log((1 - math.exp(-0.1)) / 2**r) for r in range(1, k)]
    rng = random.Random(0)
    out = []
    for _ in range(count):
        ids = [rng.choice(letter_ids) for _ in range(positions)]
        stored = []
        for index in ids:
            top = [index] + [i for i in rng.sample(others, k) if i != index][: k - 1]
            stored.append(table.position(index, -0.1, list(zip(top, rest, strict=False))).to_dict())
        out.append((b"".join(table.of_id[i] for i in ids).decode(), stored))
    return out


def write_train(folder: Path, records: int, pool: list[tuple[str, list[dict]]]) -> None:
    from components.common.records import Record, write_records

    folder.mkdir(parents=True, exist_ok=True)
    write_records(
        folder / "train.jsonl",
        (
            Record(record_id(n), [*PROMPT, {"role": "assistant", "content": pool[n % len(pool)][0]}])
            for n in range(records)
        ),
    )


def write_parquet(folder: Path, records: int, pool: list[tuple[str, list[dict]]]) -> None:
    """logprobs.parquet of `records` records: the pool through the teacher stage's writer, its row groups
    then repeated with the next record ids."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.common.logprobs_file import PARQUET_NAME, LogprobsWriter, row_schema

    written_by_stage = folder / "pool.parquet"
    with LogprobsWriter(written_by_stage) as writer:
        for number, (_, stored) in enumerate(pool):
            writer.add(record_id(number), stored)
    source = pq.ParquetFile(written_by_stage)
    groups = [source.read_row_group(i) for i in range(source.num_row_groups)]
    footer = {k: v for k, v in source.metadata.metadata.items() if k.startswith(b"kfp_distill")}
    written = 0
    with pq.ParquetWriter(folder / PARQUET_NAME, row_schema(), compression="zstd") as out:
        while written < records:
            for group in groups:
                count = min(group.num_rows, records - written)
                if count <= 0:
                    break
                ids = pa.array([record_id(written + i) for i in range(count)], pa.string())
                out.write_table(group.slice(0, count).set_column(0, "id", ids), row_group_size=count)
                written += count
        out.add_key_value_metadata(footer)
    written_by_stage.unlink()


def write_jsonl(folder: Path, records: int, pool: list[tuple[str, list[dict]]]) -> None:
    """logprobs.jsonl as the teacher stage wrote it before, the pool's positions repeating."""
    from components.common.logprobs_file import JSONL_NAME

    lines = [json.dumps(stored) for _, stored in pool]
    with (folder / JSONL_NAME).open("w", encoding="utf-8") as jsonl:
        for n in range(records):
            jsonl.write(f'{{"schema": 1, "id": "{record_id(n)}", "logprobs": {lines[n % len(lines)]}}}\n')


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
    encoded = resident_mb("VmRSS")
    if reader == "jsonl":
        from components.train.sparse_kd import attach_topk, join_logprobs_file

        join_logprobs_file(records, folder / "logprobs.jsonl")
        counts = attach_topk(examples, records, tokenizer)
        store_mb = None
    else:
        from components.common.logprobs_file import stream_logprobs
        from components.train.sparse_kd import attach_topk
        from components.train.topk_store import TopKStore

        store = TopKStore()
        counts = attach_topk(examples, records, tokenizer, stream_logprobs(folder), store)
        store_mb = store.size / 1e6
    figures = {
        "peak_mb": resident_mb("VmHWM"),
        "baseline_mb": baseline,
        "encoded_mb": encoded,
        "seconds": time.perf_counter() - start,
        "matched": counts.matched_positions,
        "mean_candidates": counts.mean_candidates,
        "store_mb": store_mb,
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
    store = f", top-k store {figures['store_mb']:.0f} MB on disk" if figures.get("store_mb") else ""
    return (
        f"{name:<36} {scale}: peak {figures['peak_mb']:.0f} MB (baseline {figures['baseline_mb']:.0f} MB, "
        f"{figures['encoded_mb']:.0f} MB with the records encoded), "
        f"read in {figures['seconds']:.0f} s, {figures['matched']} positions matched, "
        f"{figures['mean_candidates']:.2f} candidates each{store}"
    )


def extrapolated(jsonl: dict, jsonl_records: int, records: int) -> str:
    """The JSONL reading's peak per record above its baseline, and what it gives at `records`, said to be
    an extrapolation."""
    if jsonl.get("capped"):
        return f"jsonl: stopped at the cap at {jsonl_records} records, no per-record figure"
    per_record = (jsonl["peak_mb"] - jsonl["baseline_mb"]) / jsonl_records
    return (
        f"jsonl peak per record above the baseline: {per_record:.2f} MB (measured at {jsonl_records} records); "
        f"at {records} records that is about {per_record * records / 1000:.0f} GB plus the baseline: "
        "extrapolated, not measured"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000, help="the parquet side's records")
    parser.add_argument("--jsonl-records", type=int, default=1000, help="the JSONL sides' records")
    parser.add_argument("--distinct", type=int, default=1024, help="records the teacher's writer writes")
    parser.add_argument("--positions", type=int, default=256)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--cap-mb", type=float, default=8000, help="stop a reading whose RSS passes this")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from components.common.tiny_model import build_tokenizer

    with tempfile.TemporaryDirectory(prefix="bench-logprobs-") as scratch:
        scratch = Path(scratch)
        tokenizer = build_tokenizer()
        tokenizer.save_pretrained(scratch / "tokenizer")
        start = time.perf_counter()
        pool = answers(
            min(args.distinct, max(args.records, args.jsonl_records)), args.positions, args.k, tokenizer
        )
        for kind, records, write in (
            ("parquet", args.records, write_parquet),
            ("jsonl", args.jsonl_records, write_jsonl),
        ):
            write_train(scratch / kind, records, pool)
            write(scratch / kind, records, pool)
        print(f"files written in {time.perf_counter() - start:.0f} s", flush=True)
        parquet_bytes = (scratch / "parquet" / "logprobs.parquet").stat().st_size
        jsonl_bytes = (scratch / "jsonl" / "logprobs.jsonl").stat().st_size
        today = today_checkout(scratch)
        parquet = measure("parquet", scratch / "parquet", scratch / "tokenizer", ROOT, args.cap_mb)
        print(line("parquet (this checkout)", args.records, args, parquet), flush=True)
        jsonl = measure("jsonl", scratch / "jsonl", scratch / "tokenizer", today, args.cap_mb)
        print(line(f"jsonl (train stage at {TODAY[:9]})", args.jsonl_records, args, jsonl), flush=True)
        streamed = measure("streamed", scratch / "jsonl", scratch / "tokenizer", ROOT, args.cap_mb)
        print(line("jsonl streamed (this checkout)", args.jsonl_records, args, streamed))
    per_position = parquet_bytes / (args.records * args.positions)
    print(
        f"file bytes per position: parquet {per_position:.1f} ({args.records} records), "
        f"jsonl {jsonl_bytes / (args.jsonl_records * args.positions):.1f} ({args.jsonl_records} records)"
    )
    print(extrapolated(jsonl, args.jsonl_records, args.records))
    jsonl_mb = f">{jsonl['peak_mb']:.0f}" if jsonl.get("capped") else f"{jsonl['peak_mb']:.0f}"
    jsonl_s = "-" if jsonl.get("capped") else f"{jsonl['seconds']:.0f}"
    print(
        f"peak_mb_parquet={parquet['peak_mb']:.0f} peak_mb_jsonl={jsonl_mb} bytes_per_position={per_position:.1f} "
        f"records_parquet={args.records} records_jsonl={args.jsonl_records} "
        f"read_s_parquet={parquet['seconds']:.0f} read_s_jsonl={jsonl_s}"
    )


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        read_in_child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
    else:
        main()
