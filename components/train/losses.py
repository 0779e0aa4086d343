"""Token losses computed in chunks, so full-vocabulary logits never exist for the whole batch at once.

A Qwen vocabulary has 151,936 entries: fp32 logits for a batch of 8 x 2048 tokens take 8 * 2048 * 151936
* 4 bytes = 9.96 GB, twice over with a teacher. Instead the trainer takes the final hidden states at the
scored positions only (N x d), and `token_losses` projects them through the output head `chunk_size` rows
at a time, keeping only the sums of the loss terms, so peak memory holds one chunk's logits (chunk_size x
vocab) instead of N x vocab. Two ways to get the gradients through the chunks:

    fused (the default)
        The gradient in the forward pass: for each chunk, its logits, its loss and at once the loss's
        gradients with respect to the chunk's hidden states and the head's trainable parameters; the logits
        are then freed. Kept for backward: the hidden states' gradient (N x d) and an fp32 accumulator per
        trainable head parameter (none for a frozen head, as with LoRA). Backward only scales them by the incoming gradient: one forward and one
        backward of the head in all. The stored gradient is that of one scalar, so the mix
        ce_weight * CE + kd_weight * KD is fixed at the call.
    checkpoint (fused=False)
        Each chunk under activation checkpointing, its logits recomputed in the backward pass: a second
        forward of the heads. For DeepSpeed ZeRO-3, which gathers a partitioned head weight only around that
        module's own forward and backward, not inside another function's forward.

Both equal the unchunked computation (chunk_size <= 0, the test reference); bench/train_kd_memory.py
prints the three paths' peak memory and time.

Divergences (per token, teacher p and student q, both at temperature T, scaled by T^2):

    forward KL   sum p (log p - log q)            mode-covering: the student spreads over the teacher's mass
    reverse KL   sum q (log q - log p)            mode-seeking: the student picks the teacher's main mode
    JSD(beta)    beta KL(p || m) + (1 - beta) KL(q || m),  m = beta p + (1 - beta) q
                 beta = 0 is forward KL and beta = 1 reverse KL.

Sparse top-k KD (no local teacher): the teacher gave log-probabilities of its top k tokens at each position.
The distribution is treated as k + 1 buckets, the k tokens and "everything else" holding the remaining mass
1 - sum(p_k); the student's mass on "everything else" is logsumexp of its log-probs outside the top k. The
loss is the forward KL over those buckets, so a student that matches the teacher's top k gets zero loss.
Rows whose teacher tokens are not the student's (another tokenizer, see cross_tokenizer.py) are marked
`topk_sorted`: there the loss compares the two distributions' probabilities sorted in decreasing order
(ULD), rank by rank over the teacher's k, plus the remaining mass.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class Divergence:
    kind: str = "forward_kl"  # forward_kl | reverse_kl | jsd
    beta: float = 0.5
    temperature: float = 1.0
    # Compare only the first `vocab_limit` logits: heads padded to different sizes for one tokenizer.
    vocab_limit: int | None = None


@dataclass
class TokenLosses:
    """What `token_losses` returns: the loss to backpropagate, and its two sums to log."""

    loss: torch.Tensor  # ce_weight * ce_sum + kd_weight * kd_sum: differentiable fp32 scalar
    ce_sum: torch.Tensor  # summed cross-entropy over the N positions, detached fp32 scalar
    kd_sum: torch.Tensor  # summed KD divergence, detached fp32 scalar (0 without KD)


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


def sorted_probability_distance(student_logits: torch.Tensor, topk_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-row ULD distance: sum over ranks r < k of |p_(r) - q_(r)|, plus |rest_p - rest_q|.

    p_(r) is the teacher's r-th largest probability (topk_logprobs, any order, -inf in unused slots) and
    q_(r) the student's; the rest is the mass outside the ranks the teacher gave. This is the closed-form
    Wasserstein-1 distance between the sorted distributions that ULD uses, truncated at the teacher's k.
    """
    q = F.softmax(student_logits.float(), dim=-1)
    k = topk_logprobs.shape[-1]
    q_top = q.topk(min(k, q.shape[-1]), dim=-1).values
    p = topk_logprobs.float().exp().sort(dim=-1, descending=True).values[:, : q_top.shape[-1]]
    valid = torch.isfinite(topk_logprobs).sum(-1, keepdim=True) > torch.arange(
        q_top.shape[-1], device=p.device
    )
    ranks = torch.where(valid, (p - q_top).abs(), torch.zeros_like(p)).sum(-1)
    rest_p = (1.0 - (p * valid).sum(-1)).clamp_min(0.0)
    rest_q = 1.0 - (q_top * valid).sum(-1)
    return ranks + (rest_p - rest_q).abs()


@dataclass(frozen=True)
class _Labels:
    """What the student's logits are compared with at each of the N positions, sliced by `rows`."""

    targets: torch.Tensor
    teacher_hidden: torch.Tensor | None
    teacher_head: torch.nn.Module | None
    topk_ids: torch.Tensor | None
    topk_logprobs: torch.Tensor | None
    topk_mask: torch.Tensor | None
    topk_sorted: torch.Tensor | None
    spec: Divergence

    def rows(self, part: slice) -> _Labels:
        def cut(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor[part]

        return replace(
            self,
            targets=self.targets[part],
            teacher_hidden=cut(self.teacher_hidden),
            topk_ids=cut(self.topk_ids),
            topk_logprobs=cut(self.topk_logprobs),
            topk_mask=cut(self.topk_mask),
            topk_sorted=cut(self.topk_sorted),
        )


def _sums(hidden: torch.Tensor, head: torch.nn.Module, labels: _Labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and summed KD divergence (fp32 scalars) of the rows of `hidden`."""
    logits = head(hidden).float()
    ce = F.cross_entropy(logits, labels.targets, reduction="sum")
    kd = logits.new_zeros(())
    if labels.teacher_hidden is not None:
        with torch.no_grad():
            teacher_logits = labels.teacher_head(labels.teacher_hidden).float()
        limit = labels.spec.vocab_limit
        kd = divergence(logits[:, :limit], teacher_logits[:, :limit], labels.spec).sum()
    elif labels.topk_ids is not None:
        per_row = sparse_forward_kl(logits, labels.topk_ids, labels.topk_logprobs)
        if labels.topk_sorted is not None:
            uld = sorted_probability_distance(logits, labels.topk_logprobs)
            per_row = torch.where(labels.topk_sorted, uld, per_row)
        kd = (per_row * labels.topk_mask).sum()
    return ce, kd


def _chunks(rows: int, chunk_size: int) -> list[slice]:
    return [slice(start, start + chunk_size) for start in range(0, rows, chunk_size)]


def _checkpointed_sums(
    hidden: torch.Tensor, head: torch.nn.Module, labels: _Labels, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sums chunk by chunk, each chunk under activation checkpointing (recomputed in backward)."""
    if hidden.shape[0] <= chunk_size:
        return _sums(hidden, head, labels)
    ce_total = kd_total = hidden.new_zeros((), dtype=torch.float32)
    for part in _chunks(hidden.shape[0], chunk_size):
        ce, kd = checkpoint(_sums, hidden[part], head, labels.rows(part), use_reentrant=False)
        ce_total, kd_total = ce_total + ce, kd_total + kd
    return ce_total, kd_total


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


class _FusedTokenLosses(torch.autograd.Function):
    """loss = ce_weight * ce_sum + kd_weight * kd_sum, its gradients computed chunk by chunk in forward.

    `params` are the head's trainable parameters (none for a frozen head): they are inputs here so that
    autograd routes their stored gradients to them, summed with any other use (a tied embedding).
    """

    @staticmethod
    def forward(ctx, hidden, head, labels, chunk_size, ce_weight, kd_weight, *params):
        wants_hidden = ctx.needs_input_grad[0]
        hidden_grad = torch.empty_like(hidden) if wants_hidden else None
        param_grads = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        ce_total = kd_total = hidden.new_zeros((), dtype=torch.float32)
        for part in _chunks(hidden.shape[0], chunk_size):
            # The chunk's graph lives only inside this loop: keep any outer saved-tensor hooks (CPU offload,
            # an enclosing checkpoint) away from its logits. Saving a detached tensor avoids a reference cycle.
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(torch.Tensor.detach, _same):
                rows = hidden[part].detach().requires_grad_(wants_hidden)
                ce, kd = _sums(rows, head, labels.rows(part))
                inputs = ([rows] if wants_hidden else []) + list(params)
                grads = list(torch.autograd.grad(ce_weight * ce + kd_weight * kd, inputs, allow_unused=True))
            if wants_hidden:
                hidden_grad[part] = grads.pop(0)
            for total, grad in zip(param_grads, grads, strict=True):
                if grad is not None:  # a trainable parameter the head does not use
                    total.add_(grad)
            ce_total, kd_total = ce_total + ce.detach(), kd_total + kd.detach()
        ctx.hidden_grad, ctx.param_grads = hidden_grad, param_grads
        ctx.param_dtypes = [p.dtype for p in params]
        ctx.mark_non_differentiable(ce_total, kd_total)
        return ce_weight * ce_total + kd_weight * kd_total, ce_total, kd_total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_ce, _grad_kd):
        if ctx.param_grads is None:
            raise RuntimeError(
                "token_losses(fused=True) was backpropagated twice: its stored gradients are consumed by "
                "the first backward. Use fused=False to backpropagate through the loss more than once."
            )
        hidden_grad, param_grads = ctx.hidden_grad, ctx.param_grads
        ctx.hidden_grad = ctx.param_grads = None  # scaled in place below, and freed once autograd has them
        if hidden_grad is not None:
            hidden_grad.mul_(grad_loss)
        scaled = [
            total.mul_(grad_loss).to(dtype)
            for total, dtype in zip(param_grads, ctx.param_dtypes, strict=True)
        ]
        return hidden_grad, None, None, None, None, None, *scaled


def token_losses(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: torch.nn.Module,
    chunk_size: int,
    *,
    ce_weight: float = 1.0,
    kd_weight: float = 0.0,
    teacher_hidden: torch.Tensor | None = None,
    teacher_head: torch.nn.Module | None = None,
    topk_ids: torch.Tensor | None = None,
    topk_logprobs: torch.Tensor | None = None,
    topk_mask: torch.Tensor | None = None,
    topk_sorted: torch.Tensor | None = None,
    spec: Divergence = Divergence(),
    fused: bool = True,
) -> TokenLosses:
    """The mixed loss and the summed CE and KD over N scored positions (hidden is N x d, targets N).

    KD comes from a local teacher (`teacher_hidden` N x d_teacher through `teacher_head`) or from stored
    top-k log-probabilities (`topk_*`, masked by `topk_mask`; rows marked in `topk_sorted` take the sorted-
    probability distance instead of the KL); with neither, kd_sum is 0.
    `chunk_size` <= 0 computes everything in one piece: the reference, holding N x vocab logits until
    backward. Otherwise `fused` computes the gradients in the forward pass; `fused=False` checkpoints each
    chunk and recomputes it in backward, for DeepSpeed ZeRO-3, which gathers a trainable head's weight only
    around the module's own forward and backward.
    """
    labels = _Labels(
        targets, teacher_hidden, teacher_head, topk_ids, topk_logprobs, topk_mask, topk_sorted, spec
    )
    params = [p for p in head.parameters() if p.requires_grad]
    wants_grad = torch.is_grad_enabled() and (hidden.requires_grad or bool(params))
    if chunk_size > 0 and fused and wants_grad:
        loss, ce, kd = _FusedTokenLosses.apply(
            hidden, head, labels, chunk_size, ce_weight, kd_weight, *params
        )
        return TokenLosses(loss, ce, kd)
    if chunk_size > 0:
        ce, kd = _checkpointed_sums(hidden, head, labels, chunk_size)
    else:
        ce, kd = _sums(hidden, head, labels)
    return TokenLosses(ce_weight * ce + kd_weight * kd, ce.detach(), kd.detach())
