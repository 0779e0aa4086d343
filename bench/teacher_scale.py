"""The teacher stage at dataset scale: N prompts at concurrency 256, killed (SIGKILL) half way, resumed.

    python bench/teacher_scale.py [--prompts 1000000] [--latency 1.0] [--concurrency 256] [--shards 1]

The prompts are made on the spot (one distinct "Reverse the letters of: <word>" per line) and the demo
teacher answers on loopback in a process of its own, each answer after `latency` seconds, so no client
can beat concurrency / latency answers a second: that bound is the peer of the rate. The stage runs in
a child process (`run_shard`, then `run_shard` + `finalize` for the resume), as a pod would:

    peak_mb            the larger peak RSS of the two stage processes (ru_maxrss from wait4)
    resume_s           from the restarted process's start to its first new request: imports, the plan
                       over the whole dataset, the journal's scan and the reading of the dataset up to
                       the first prompt not answered (taken as its first progress line with an answer,
                       less one latency; progress is logged every 0.25 s)
    bytes_per_record   bytes of the run's journal and the answer cache in the store, per prompt
    ratio@256          answers per second between 10% and the kill, over concurrency / latency

With --shards K > 1 the same prompts are asked, without the kill, by one shard process and then by K
shard processes at once (each at --concurrency, as `teacher_shards` pods would), each run finalized:
the last line gives both rates and their ratio, `scaling@K`. Other processes compete for the same
cores: the load average before and after is printed with the figures.
With --offline no teacher runs: the journal of N answered prompts is written directly and the stage
then only plans, scans the journal (finding nothing to ask) and finalizes: the memory and time of those
steps at sizes the loaded machine cannot ask for in the time at hand.
Last line: peak_mb= resume_s= bytes_per_record= ratio@<concurrency>= (or rate@1= rate@K= scaling@K=).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.teacher_throughput import start_server  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROGRESS = re.compile(r"teacher: (\d+)/(\d+) prompts")
PLANNED = re.compile(r"shard \d+/\d+: .* to ask")


def word(i: int) -> str:
    """A distinct lowercase word for each i (its digits in base 26, at least three letters)."""
    letters = []
    while True:
        i, digit = divmod(i, 26)
        letters.append(chr(97 + digit))
        if i == 0 and len(letters) >= 3:
            return "".join(reversed(letters))


def write_prompts(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for start in range(0, count, 10_000):
            handle.write(
                "".join(
                    f'{{"prompt": "Reverse the letters of: {word(i)}"}}\n'
                    for i in range(start, min(count, start + 10_000))
                )
            )


class Stage:
    """A stage process: its progress as (seconds since start, prompts done) and the planned moment."""

    def __init__(self, config: Path, shard: int, shards: int, finalize: bool):
        command = [
            sys.executable,
            __file__,
            "--child",
            str(config),
            "--shard",
            str(shard),
            "--shards",
            str(shards),
        ]
        if finalize:
            command.append("--finalize")
        self.start = time.monotonic()
        self.process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
        self.progress: list[tuple[float, int]] = []
        self.planned_s: float | None = None
        self.tail: list[str] = []
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self) -> None:
        for line in self.process.stderr:
            now = time.monotonic() - self.start
            self.tail = [*self.tail[-20:], line]
            if self.planned_s is None and PLANNED.search(line):
                self.planned_s = now
            match = PROGRESS.search(line)
            if match:
                self.progress.append((now, int(match.group(1))))

    @property
    def done(self) -> int:
        return self.progress[-1][1] if self.progress else 0

    def wait(self) -> tuple[int, float]:
        """(exit status, peak RSS in MB)"""
        _, status, usage = os.wait4(self.process.pid, 0)
        self.process.returncode = os.waitstatus_to_exitcode(status)
        self.reader.join(timeout=10)
        return self.process.returncode, usage.ru_maxrss / 1024

    def first_answer_s(self) -> float:
        return next(t for t, done in self.progress if done > 0)

    def rate_between(self, low: int, high: int) -> float:
        points = [(t, d) for t, d in self.progress if low <= d <= high] or self.progress
        (t0, d0), (t1, d1) = points[0], points[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0


def store_bytes(store: Path, run_id: str) -> int:
    total = 0
    for folder in (store / "runs" / run_id / "teacher", store / "cache" / "teacher"):
        for root, _, files in os.walk(folder):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def settings(work: Path, base_url: str, concurrency: int, run_id: str) -> Path:
    path = work / f"{run_id}.yaml"
    config = {
        "dataset": str(work / "prompts.jsonl"),
        "output_dir": str(work / run_id / "out"),
        "store_uri": str(work / run_id / "store"),
        "run_id": run_id,
        "concurrency": concurrency,
        "progress_bar": False,
        "log_every_s": 0.25,
        "checkpoint_records": 256,
        "test_ratio": 0.01,
        "provider": {"name": "demo", "base_url": base_url, "max_retries": 10},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def kill_and_resume(work: Path, base_url: str, args) -> str:
    config = settings(work, base_url, args.concurrency, "scale")
    first = Stage(config, 0, 1, finalize=False)
    while first.done < args.prompts // 2 and first.process.poll() is None:
        time.sleep(0.2)
    os.kill(first.process.pid, signal.SIGKILL)
    _, first_mb = first.wait()
    rate = first.rate_between(args.prompts // 10, args.prompts)
    bound = args.concurrency / args.latency
    print(
        f"first run: killed at {first.done} of {args.prompts} answers, peak {first_mb:.0f} MB, {rate:.1f}/s of bound {bound:.1f}/s",
        flush=True,
    )
    second = Stage(config, 0, 1, finalize=True)
    code, second_mb = second.wait()
    if code != 0:
        raise RuntimeError("the resumed stage failed:\n" + "".join(second.tail))
    per_record = store_bytes(work / "scale" / "store", "scale") / args.prompts
    resume_s = second.first_answer_s() - args.latency
    print(
        f"resumed run: planned and journal scanned after {second.planned_s:.1f} s, first new request after "
        f"{resume_s:.1f} s, peak {second_mb:.0f} MB, {per_record:.0f} bytes per record",
        flush=True,
    )
    return (
        f"peak_mb={max(first_mb, second_mb):.0f} resume_s={resume_s:.1f} "
        f"bytes_per_record={per_record:.0f} ratio@{args.concurrency}={rate / bound:.3f}"
    )


def shards_rate(work: Path, base_url: str, args, shards: int) -> tuple[float, float]:
    """(answers per second of `shards` shard processes side by side, their largest peak RSS in MB)"""
    config = settings(work, base_url, args.concurrency, f"shards{shards}")
    stages = [Stage(config, i, shards, finalize=False) for i in range(shards)]
    peaks = []
    for stage in stages:
        code, peak = stage.wait()
        if code != 0:
            raise RuntimeError("a shard failed:\n" + "".join(stage.tail))
        peaks.append(peak)
    # Each shard's steady rate (from its 10th to its 90th percent), summed: they run side by side.
    share = args.prompts // shards
    rate = sum(s.rate_between(share // 10, share * 9 // 10) for s in stages)
    final = Stage(config, 0, 1, finalize=True)
    code, final_mb = final.wait()
    if code != 0:
        raise RuntimeError("finalize failed:\n" + "".join(final.tail))
    bound = shards * args.concurrency / args.latency
    print(
        f"{shards} shard processes: {rate:.1f}/s of bound {bound:.1f}/s, peaks {[round(p) for p in peaks]} MB",
        flush=True,
    )
    return rate, max([*peaks, final_mb])


def shards_side_by_side(work: Path, base_url: str, args) -> str:
    """The same prompts asked by one shard process, then by --shards processes: the peer is one."""
    one, one_mb = shards_rate(work, base_url, args, 1)
    many, many_mb = shards_rate(work, base_url, args, args.shards)
    return (
        f"peak_mb={max(one_mb, many_mb):.0f} rate@1={one:.1f} rate@{args.shards}={many:.1f} "
        f"scaling@{args.shards}={many / one:.2f}"
    )


def write_journal(config_path: Path, count: int) -> None:
    """The journal a finished run of `count` prompts leaves (one shard, compacted), written directly: the
    entries the stage writes for the demo teacher's answers, without asking for them."""
    from components.common.config import from_dict
    from components.common.openai_api import Choice
    from components.common.providers import resolve_provider
    from components.common.store import open_store
    from components.teacher import Config
    from components.teacher.journal import Journal, shard_name
    from components.teacher.money import Spend
    from components.teacher.plan import RecordIds
    from components.teacher.readers import Prompt
    from components.teacher.worker_pool import Job, make_entry
    from pipelines.demo_teacher import demo_answer

    config = from_dict(Config, yaml.safe_load(config_path.read_text()))
    settings = resolve_provider(config.provider).settings()
    record_id = RecordIds(settings)
    journal = Journal(open_store(config.store_uri).child(f"runs/{config.run_id}/teacher"), shard_name(0, 1))
    batch = []
    for i in range(count):
        messages = [{"role": "user", "content": f"Reverse the letters of: {word(i)}"}]
        job = Job(
            record_id(messages), Prompt(messages, source=f"prompts.jsonl:{i + 1}"), spent=Spend(1, 12, 30)
        )
        content, reasoning = demo_answer(messages[0]["content"])
        batch.append(make_entry(job, [Choice(content, reasoning, "stop")], "ok", "", settings))
        if len(batch) == 20_000:
            journal.write_part(batch)
            batch = []
    journal.write_part(batch)


def offline(work: Path, args) -> str:
    """The resume scan and finalize at N prompts without asking: a journal of N answers written directly,
    then `run` in a child process (it plans, scans the journal, finds nothing to ask, finalizes)."""
    config = settings(work, "http://127.0.0.1:9/v1", args.concurrency, "offline")
    write_journal(config, args.prompts)
    journal_bytes = store_bytes(work / "offline" / "store", "offline")
    stage = Stage(config, 0, 1, finalize=True)
    code, peak = stage.wait()
    if code != 0:
        raise RuntimeError("the stage failed:\n" + "".join(stage.tail))
    total = time.monotonic() - stage.start
    print(
        f"{args.prompts} answered prompts: planned and scanned in {stage.planned_s:.1f} s, finalized by {total:.1f} s",
        flush=True,
    )
    return (
        f"peak_mb={peak:.0f} scan_s={stage.planned_s:.1f} finalize_s={total - stage.planned_s:.1f} "
        f"journal_bytes_per_record={journal_bytes / args.prompts:.0f}"
    )


def child(args) -> None:
    from components.common.config import from_dict
    from components.teacher import Config
    from components.teacher.stage import finalize, run_shard

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = from_dict(Config, yaml.safe_load(Path(args.child).read_text()))
    run_shard(config, args.shard, args.shards)
    if args.finalize:
        finalize(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=1_000_000)
    parser.add_argument("--latency", type=float, default=1.0, help="seconds the teacher adds to each request")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--shards", type=int, default=1, help="K > 1: K shard processes at once, no kill")
    parser.add_argument(
        "--offline",
        action="store_true",
        help="no teacher: a journal of N answers, then the resume scan and finalize",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--shard", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--finalize", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="teacher-scale-") as scratch:
        work = Path(scratch)
        write_prompts(work / "prompts.jsonl", args.prompts)
        if args.offline:
            print(offline(work, args))
            return
        server, base_url = start_server(args.latency, 0.0)
        try:
            line = (shards_side_by_side if args.shards > 1 else kill_and_resume)(work, base_url, args)
        finally:
            server.terminate()
            server.wait(timeout=10)
    print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)
    print(line)


if __name__ == "__main__":
    main()
