"""Throughput of the teacher stage against its bound, on a loopback teacher that adds a fixed latency.

    python bench/teacher_throughput.py [--latency 1.0] [--rounds 16]

With `c` requests in flight and `latency` seconds per request, no client can beat c / latency answers a
second: that bound is the peer. For c in 16, 64 and 256 the script runs the real stage (`run_shard`: the
openai SDK, the worker pool, the journal) over c * rounds prompts and prints achieved / bound; then again
at 64 with 10% of requests answered 429 (Retry-After 1 s, refused at once like a gateway does). The demo
teacher runs in its own process so that client and server do not share one interpreter lock.
Target on a 2-core machine: >= 0.9 at 256, and >= 0.9 at 64 with 429s. Each line also gives the CPU
time per request of client and server (the server's is counted when it exits), which tells how close a
loaded machine is to its limit. Last line: the four ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from components.common.config import from_dict
from components.teacher import Config
from components.teacher.stage import run_shard
from pipelines.demo_teacher import write_demo_dataset

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(latency: float, rate_limit_fraction: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "pipelines.demo_teacher",
        "--port",
        str(port),
        "--latency",
        str(latency),
        "--rate-limit-fraction",
        str(rate_limit_fraction),
        "--retry-after",
        "1.0",
    ]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=1) as response:
                json.load(response)
            return process, base_url
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the demo teacher did not start") from None
            time.sleep(0.1)


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def measure(concurrency: int, latency: float, rounds: int, rate_limit_fraction: float, work: Path) -> float:
    """achieved answers per second / (concurrency / latency)"""
    count = concurrency * rounds
    name = f"c{concurrency}-f{rate_limit_fraction}"
    dataset = write_demo_dataset(work / f"{name}.jsonl", count, seed=concurrency)
    process, base_url = start_server(latency, rate_limit_fraction)
    try:
        config = from_dict(
            Config,
            {
                "dataset": str(dataset),
                "output_dir": str(work / name),
                "store_uri": str(work / "store"),
                "run_id": name,
                "concurrency": concurrency,
                "use_cache": False,
                "progress_bar": False,
                "log_every_s": 3600.0,
                "provider": {"name": "demo", "base_url": base_url, "max_retries": 10},
            },
        )
        start, cpu_start = time.perf_counter(), _cpu(resource.RUSAGE_SELF)
        result = run_shard(config)
        elapsed, client_cpu = time.perf_counter() - start, _cpu(resource.RUSAGE_SELF) - cpu_start
    finally:
        children = _cpu(resource.RUSAGE_CHILDREN)
        process.terminate()
        process.wait(timeout=10)
    server_cpu = _cpu(resource.RUSAGE_CHILDREN) - children
    answered = result.metrics["answered"]
    if answered != count:
        raise RuntimeError(f"{name}: {answered:.0f} of {count} prompts answered")
    achieved, bound = answered / elapsed, concurrency / latency
    print(
        f"concurrency={concurrency:<4d} 429s={rate_limit_fraction:.0%}  prompts={count:<5d} "
        f"requests={result.metrics['requests']:.0f}  {elapsed:6.2f}s  {achieved:7.1f}/s  "
        f"bound {bound:7.1f}/s  ratio {achieved / bound:.3f}  CPU per request: client "
        f"{1000 * client_cpu / result.metrics['requests']:.2f} ms, server "
        f"{1000 * server_cpu / result.metrics['requests']:.2f} ms",
        flush=True,
    )
    return achieved / bound


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, default=1.0, help="seconds the teacher adds to each request")
    # A prompt refused near the end still waits out its Retry-After and a full latency: a tail of about 2 s
    # that a short run would mostly measure. 16 rounds keep it a small part, as in a real, hours-long run.
    parser.add_argument("--rounds", type=int, default=16, help="prompts per run = concurrency * rounds")
    args = parser.parse_args()
    # Other processes compete for the same cores; the load average says how much the figures suffer.
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="teacher-bench-") as scratch:
        work = Path(scratch)
        ratios = {f"ratio@{c}": measure(c, args.latency, args.rounds, 0.0, work) for c in (16, 64, 256)}
        ratios["ratio@64+429"] = measure(64, args.latency, args.rounds, 0.1, work)
    print(" ".join(f"{key}={value:.3f}" for key, value in ratios.items()))


if __name__ == "__main__":
    main()
