"""Throughput of the served-teacher scorer (kd.teacher_url) against its bound, on a loopback scoring
server that adds a fixed latency to each request.

    python bench/teacher_scorer_throughput.py [--latency 0.5] [--rounds 8] [--batch-size 4]

With at most `c` requests in flight and `latency` seconds per request, no client sends more than
c / latency requests a second: that bound is the peer. For c in 1, 4 and 16 the script scores
c * rounds * batch_size samples through HttpScorer (batch_size samples per request, c in flight) and
prints achieved / bound, beside the old one-request-at-a-time path (one sample per request, one in flight:
HttpScorer with batch_size=1, concurrency=1) measured against the same bound. Samples per second are
printed for both, and the client's CPU time per sample (all its threads: rendering, HTTP, decoding and
checking the reply). The server runs in its own process (pipelines.demo_scoring_server), so that client
and server do not share one interpreter lock; its reply has the shape vLLM's has, and building it is part
of its latency, as a remote server's work is. The load average is printed before and after: other jobs on
the machine take cores from both. Target on a 2-core machine: >= 0.9 at 16. Last line: `ratio@16=`.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from components.common.tiny_model import build_tokenizer
from components.train.teacher_scoring import HttpScorer

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def scoring_server(vocab_size: int, latency: float):
    """The loopback scoring server's URL, the server running in a child process until the block ends."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "pipelines.demo_scoring_server", "--port", str(port)]
    command += ["--vocab-size", str(vocab_size), "--latency", str(latency)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the scoring server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def samples(count: int) -> tuple[list[list[dict]], list[str]]:
    words = [f"word{index:05d}" for index in range(count)]
    return [[{"role": "user", "content": f"Reverse the letters of: {w}"}] for w in words], [
        w[::-1] for w in words
    ]


def measure(url: str, tokenizer, latency: float, count: int, batch_size: int, concurrency: int):
    """(achieved requests in flight / concurrency, samples per second, client CPU ms per sample) scoring
    `count` samples."""
    prompts, answers = samples(count)
    scorer = HttpScorer(url, "teacher", tokenizer, top_k=8, batch_size=batch_size, concurrency=concurrency)
    start, cpu = time.perf_counter(), time.process_time()
    scored = scorer.entries(prompts, answers)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    if len(scored) != count or any(s.bad or not s.positions for s in scored):
        raise RuntimeError(f"{len(scored)} of {count} samples scored, or some not whole")
    return math.ceil(count / batch_size) * latency / elapsed, count / elapsed, cpu * 1000 / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, default=0.5, help="seconds the server adds to each request")
    parser.add_argument("--rounds", type=int, default=8, help="requests per concurrency slot")
    parser.add_argument(
        "--batch-size", type=int, default=4, help="samples per request (kd.teacher_batch_size)"
    )
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    tokenizer = build_tokenizer()
    with scoring_server(len(tokenizer), args.latency) as url:
        old_in_flight, old_rate, _ = measure(url, tokenizer, args.latency, args.rounds, 1, 1)
        print(
            f"{'c':>3}  {'ratio':>6}  {'old ratio':>9}  {'samples/s':>9}  {'old samples/s':>13}  "
            f"{'client CPU ms/sample':>20}",
            flush=True,
        )
        ratios = {}
        for concurrency in (1, 4, 16):
            count = concurrency * args.rounds * args.batch_size
            in_flight, rate, cpu_ms = measure(
                url, tokenizer, args.latency, count, args.batch_size, concurrency
            )
            ratios[concurrency] = in_flight / concurrency
            print(
                f"{concurrency:>3}  {ratios[concurrency]:6.3f}  {old_in_flight / concurrency:9.3f}  "
                f"{rate:9.1f}  {old_rate:13.1f}  {cpu_ms:20.2f}",
                flush=True,
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"ratio@16={ratios[16]:.3f}")


if __name__ == "__main__":
    main()
