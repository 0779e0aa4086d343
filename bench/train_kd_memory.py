"""Peak memory and time of the KD loss with a Qwen-sized vocabulary: unchunked, checkpointed chunks, fused chunks.

    python bench/train_kd_memory.py [--tokens 512] [--chunk 128] [--repeats 3] [--device cpu|cuda]

Each variant runs forward + backward of 0.5 CE + 0.5 forward KL for `tokens` scored positions (student width
896, teacher width 1536, 151,936 vocabulary entries: Qwen2.5-0.5B student, 1.5B teacher; trainable fp32
student head) in a fresh process, `repeats` times, and reports the fastest run and the peak memory above
the inputs: the growth of peak resident memory on CPU, of peak allocated memory on CUDA. The variants:

    unchunked    token_losses(chunk_size=0): fp32 logits alone take tokens * 151936 * 4 bytes per model
                 (311 MB at 512 tokens), plus softmax intermediates, kept until backward
    checkpoint   token_losses(fused=False): each chunk's logits recomputed in backward
    fused        token_losses(fused=True): each chunk's gradients computed in forward, logits freed at once

Every variant also holds the head's gradient (151936 * 896 * 4 bytes = 545 MB); the fused one keeps it as
an fp32 accumulator from forward to backward. Last line: key=value headline figures.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time

VOCAB, STUDENT, TEACHER = 151936, 896, 1536
VARIANTS = {"unchunked": (False, True), "checkpoint": (True, False), "fused": (True, True)}  # chunked, fused


def measure(variant: str, tokens: int, chunk: int, repeats: int, device: str, queue) -> None:
    import torch

    from components.train.losses import Divergence, token_losses

    chunked, fused = VARIANTS[variant]
    torch.manual_seed(0)
    head = torch.nn.Linear(STUDENT, VOCAB, bias=False, device=device)
    teacher_head = torch.nn.Linear(TEACHER, VOCAB, bias=False, device=device).requires_grad_(False)
    hidden = torch.randn(tokens, STUDENT, device=device, requires_grad=True)
    teacher_hidden = torch.randn(tokens, TEACHER, device=device)
    targets = torch.randint(0, VOCAB, (tokens,), device=device)
    cuda = device == "cuda"
    before = torch.cuda.memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        head.weight.grad = hidden.grad = None
        started = time.perf_counter()
        out = token_losses(
            hidden,
            targets,
            head,
            chunk if chunked else 0,
            ce_weight=0.5,
            kd_weight=0.5,
            teacher_hidden=teacher_hidden,
            teacher_head=teacher_head,
            spec=Divergence(),
            fused=fused,
        )
        out.loss.backward()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    if cuda:
        peak_mib = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # KiB on Linux
    queue.put((peak_mib, min(times), float(out.loss.detach())))


def run_variant(
    variant: str, tokens: int, chunk: int, repeats: int, device: str
) -> tuple[float, float, float]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=measure, args=(variant, tokens, chunk, repeats, device, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    results = {
        name: run_variant(name, args.tokens, args.chunk, args.repeats, args.device) for name in VARIANTS
    }
    for name, (mib, seconds, loss) in results.items():
        print(f"{name:>10}: +{mib:.0f} MiB peak, {seconds:.2f}s forward+backward, loss {loss:.6f}")
    (whole_mb, whole_s, whole_loss), (ckpt_mb, ckpt_s, _), (fused_mb, fused_s, fused_loss) = results.values()
    print(
        f"device={args.device} tokens={args.tokens} chunk={args.chunk} unchunked_peak_mib={whole_mb:.0f} "
        f"checkpoint_peak_mib={ckpt_mb:.0f} fused_peak_mib={fused_mb:.0f} unchunked_s={whole_s:.3f} "
        f"checkpoint_s={ckpt_s:.3f} fused_s={fused_s:.3f} checkpoint_over_fused_time={ckpt_s / fused_s:.2f} "
        f"loss_diff={abs(fused_loss - whole_loss):.2e}"
    )


if __name__ == "__main__":
    main()
