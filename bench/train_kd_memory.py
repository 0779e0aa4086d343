"""Peak memory and time of the KD loss with a Qwen-sized vocabulary: chunked over tokens against unchunked.

    python bench/train_kd_memory.py [--tokens 512] [--chunk 128]

Each variant runs forward + backward of CE + forward KL for `tokens` scored positions (student width 896,
teacher width 1536, 151,936 vocabulary entries: Qwen2.5-0.5B student, 1.5B teacher) in a fresh process,
and reports the growth of its peak resident memory over the inputs. Unchunked, fp32 logits alone take
tokens * 151936 * 4 bytes per model (311 MB at 512 tokens) plus softmax intermediates. Last line:
key=value headline figures.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time

VOCAB, STUDENT, TEACHER = 151936, 896, 1536


def measure(tokens: int, chunk: int, queue) -> None:
    import torch

    from components.train.losses import Divergence, chunked_token_losses

    torch.manual_seed(0)
    head = torch.nn.Linear(STUDENT, VOCAB, bias=False)
    teacher_head = torch.nn.Linear(TEACHER, VOCAB, bias=False).requires_grad_(False)
    hidden = torch.randn(tokens, STUDENT, requires_grad=True)
    teacher_hidden = torch.randn(tokens, TEACHER)
    targets = torch.randint(0, VOCAB, (tokens,))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    ce, kd = chunked_token_losses(
        hidden,
        targets,
        head,
        chunk,
        teacher_hidden=teacher_hidden,
        teacher_head=teacher_head,
        spec=Divergence(),
    )
    (0.5 * ce + 0.5 * kd).backward()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    queue.put(((peak - before) / 1024, seconds, float((ce + kd).detach())))


def run_variant(tokens: int, chunk: int) -> tuple[float, float, float]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=measure, args=(tokens, chunk, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=128)
    args = parser.parse_args()
    whole_mb, whole_s, whole_loss = run_variant(args.tokens, 0)
    chunk_mb, chunk_s, chunk_loss = run_variant(args.tokens, args.chunk)
    print(f"unchunked: +{whole_mb:.0f} MiB peak, {whole_s:.2f}s, loss {whole_loss:.6f}")
    print(f"chunk {args.chunk}: +{chunk_mb:.0f} MiB peak, {chunk_s:.2f}s, loss {chunk_loss:.6f}")
    print(
        f"tokens={args.tokens} chunk={args.chunk} unchunked_peak_mib={whole_mb:.0f} chunked_peak_mib={chunk_mb:.0f} "
        f"memory_ratio={chunk_mb / whole_mb:.3f} time_ratio={chunk_s / whole_s:.3f} "
        f"loss_diff={abs(chunk_loss - whole_loss):.2e}"
    )


if __name__ == "__main__":
    main()
