"""Token losses computed in chunks, so full-vocabulary logits never exist for the whole batch at once.

A Qwen vocabulary has 151,936 entries: fp32 logits for a batch of 8 x 2048 tokens take 8 * 2048 * 151936
* 4 bytes = 9.96 GB, twice over with a teacher. Instead the trainer takes the final hidden states at the
scored positions only (N x d), and for each chunk of `chunk_size` rows projects them through the output
head, computes the loss terms and keeps only their sums. Each chunk runs under activation checkpointing:
its logits are freed after the forward pass and recomputed in the backward pass, so peak memory holds one
chunk's logits (chunk_size x vocab) instead of N x vocab. The result equals the unchunked loss. The price
is a second pass through the output heads in the backward pass: bench/train_kd_memory.py measures the
loss's peak memory flat at about 1.65 GB (mostly the head's gradient) from 512 to 1536 tokens against 2.4
to 7.1 GB unchunked, for about 1.7x the loss's own time.

Divergences (per token, teacher p and student q, both at temperature T, scaled by T^2 as in Hinton et al.):

    forward KL   sum p (log p - log q)            mode-covering: the student spreads over the teacher's mass
    reverse KL   sum q (log q - log p)            mode-seeking: the student picks the teacher's main mode
    JSD(beta)    beta KL(p || m) + (1 - beta) KL(q || m),  m = beta p + (1 - beta) q   (GKD, Agarwal et al.)
                 beta = 0 is forward KL and beta = 1 reverse KL, as in TRL's GKD trainer.

Sparse top-k KD (no local teacher): the teacher gave log-probabilities of its top k tokens at each position.
The distribution is treated as k + 1 buckets, the k tokens and "everything else" holding the remaining mass
1 - sum(p_k); the student's mass on "everything else" is logsumexp of its log-probs outside the top k. The
loss is the forward KL over those buckets, so a student that matches the teacher's top k gets zero loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class Divergence:
    kind: str = "forward_kl"  # forward_kl | reverse_kl | jsd
    beta: float = 0.5
    temperature: float = 1.0
    # Compare only the first `vocab_limit` logits: heads padded to different sizes for one tokenizer.
    vocab_limit: int | None = None


def divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, spec: Divergence) -> torch.Tensor:
    """Per-row divergence between the teacher's and the student's distributions, scaled by T^2."""
    t = spec.temperature
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kind, beta = spec.kind, spec.beta
    if kind == "jsd" and beta == 0.0:
        kind = "forward_kl"
    if kind == "jsd" and beta == 1.0:
        kind = "reverse_kl"
    if kind == "forward_kl":
        value = (log_p.exp() * (log_p - log_q)).sum(-1)
    elif kind == "reverse_kl":
        value = (log_q.exp() * (log_q - log_p)).sum(-1)
    elif kind == "jsd":
        log_m = torch.logsumexp(
            torch.stack([log_p + torch.log(torch.tensor(beta)), log_q + torch.log(torch.tensor(1 - beta))]),
            dim=0,
        )
        kl_p = (log_p.exp() * (log_p - log_m)).sum(-1)
        kl_q = (log_q.exp() * (log_q - log_m)).sum(-1)
        value = beta * kl_p + (1 - beta) * kl_q
    else:
        raise ValueError(f"unknown divergence {kind!r}")
    return value * t * t


def sparse_forward_kl(
    student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor
) -> torch.Tensor:
    """Per-row forward KL over the teacher's top-k tokens plus one bucket for the remaining mass.

    topk_ids (n, k) int and topk_logprobs (n, k) float; unused slots have logprob -inf.
    """
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    log_p = topk_logprobs.float()
    log_q_top = log_q.gather(-1, topk_ids)
    p = log_p.exp()
    # Entries with p = 0 contribute 0 (xlogy convention), never NaN from -inf - -inf.
    top = torch.where(p > 0, p * (log_p - log_q_top), torch.zeros_like(p)).sum(-1)
    rest_p = (1.0 - p.sum(-1)).clamp_min(0.0)
    # A large finite fill instead of -inf: when the top k cover the whole vocabulary, logsumexp and its
    # gradient stay finite (the bucket is then empty and skipped below).
    outside = log_q.scatter(-1, topk_ids, -1e4)
    log_rest_q = torch.logsumexp(outside, dim=-1)
    log_rest_p = torch.log(rest_p.clamp_min(1e-12))
    # Below 1e-6 the "rest" is float rounding of a top-k that holds all the mass.
    rest = torch.where(rest_p > 1e-6, rest_p * (log_rest_p - log_rest_q), torch.zeros_like(rest_p))
    return top + rest


def _chunk_sums(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: torch.nn.Module,
    teacher_hidden: torch.Tensor | None,
    teacher_head: torch.nn.Module | None,
    topk_ids: torch.Tensor | None,
    topk_logprobs: torch.Tensor | None,
    topk_mask: torch.Tensor | None,
    spec: Divergence,
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden).float()
    ce = F.cross_entropy(logits, targets, reduction="sum")
    kd = logits.new_zeros(())
    if teacher_hidden is not None:
        with torch.no_grad():
            teacher_logits = teacher_head(teacher_hidden).float()
        limit = spec.vocab_limit
        kd = divergence(logits[:, :limit], teacher_logits[:, :limit], spec).sum()
    elif topk_ids is not None:
        per_row = sparse_forward_kl(logits, topk_ids, topk_logprobs)
        kd = (per_row * topk_mask).sum()
    return ce, kd


def chunked_token_losses(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: torch.nn.Module,
    chunk_size: int,
    teacher_hidden: torch.Tensor | None = None,
    teacher_head: torch.nn.Module | None = None,
    topk_ids: torch.Tensor | None = None,
    topk_logprobs: torch.Tensor | None = None,
    topk_mask: torch.Tensor | None = None,
    spec: Divergence = Divergence(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and summed KD divergence over N scored positions (hidden is N x d).

    `chunk_size` <= 0 computes everything in one piece (the reference the chunked path must equal).
    """
    if chunk_size <= 0 or hidden.shape[0] <= chunk_size:
        return _chunk_sums(
            hidden, targets, head, teacher_hidden, teacher_head, topk_ids, topk_logprobs, topk_mask, spec
        )
    ce_total = hidden.new_zeros((), dtype=torch.float32)
    kd_total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_size):
        part = slice(start, start + chunk_size)
        ce, kd = checkpoint(
            _chunk_sums,
            hidden[part],
            targets[part],
            head,
            None if teacher_hidden is None else teacher_hidden[part],
            teacher_head,
            None if topk_ids is None else topk_ids[part],
            None if topk_logprobs is None else topk_logprobs[part],
            None if topk_mask is None else topk_mask[part],
            spec,
            use_reentrant=False,
        )
        ce_total = ce_total + ce
        kd_total = kd_total + kd
    return ce_total, kd_total
