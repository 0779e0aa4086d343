"""Causal attention inside each example of a padding-free row (`batching: padding_free`).

A padding-free micro-batch is one row holding every example end to end. transformers would read the
restarting position ids and build a (tokens x tokens) block-diagonal mask, then run attention over the
whole row: for 16 examples of 380 tokens that is 16x the attention work of the examples alone, plus a
36M-entry mask. Instead this module registers an attention function with transformers (under NAME) that
gets the examples' offsets (`cu_seq_lens_q`, passed by Batch.model_inputs) and runs

- on CUDA in bf16/fp16: PyTorch's variable-length flash attention (`torch.nn.attention.varlen`, PyTorch
  2.10+), which attends within each example and costs sum(n_i^2) instead of (sum n_i)^2;
- elsewhere (CPU, fp32, older PyTorch): scaled_dot_product_attention over the examples scattered into a
  (examples, longest, heads, dim) block, right-padded. With a causal mask a real query never sees the
  padding behind it, so no extra mask is needed; padded queries are dropped on the way back.

No mask function is registered under NAME, so transformers builds no mask for it at all: for a row of
64 records of 1,000 tokens its SDPA mask alone would take 64,000^2 bytes = 4 GB, and detecting the
records from the position ids would make the host wait for the GPU on every forward pass. The offsets say
everything, and a call without them is refused rather than attended across records. `attention: auto`
picks NAME only for padding-free batches; it is not written into a saved model's config.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

NAME = "distill_varlen"


def _flash_varlen():
    """PyTorch's varlen flash attention and the keyword that makes it causal, or None when absent."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    # PyTorch 2.10 takes is_causal; later releases express causality as the window (-1, 0).
    causal = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    return varlen_attn, causal, "scale" in params


FLASH = _flash_varlen()


def flash_usable(query: torch.Tensor) -> bool:
    return (
        FLASH is not None
        and query.is_cuda
        and query.dtype in (torch.bfloat16, torch.float16)
        and query.shape[-1] % 8 == 0
        and query.shape[-1] <= 256
    )


def varlen_flash(q, k, v, cu_seqlens, max_seqlen, scale):
    varlen_attn, causal, takes_scale = FLASH
    default_scale = q.shape[-1] ** -0.5
    if not takes_scale and abs(scale - default_scale) > 1e-12:
        return varlen_padded_sdpa(q, k, v, cu_seqlens, max_seqlen, scale)
    extra = {"scale": scale} if takes_scale else {}
    return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **causal, **extra)


def varlen_padded_sdpa(q, k, v, cu_seqlens, max_seqlen, scale):
    """The reference path: (tokens, heads, dim) -> per-example padded block -> causal SDPA -> back."""
    tokens = q.shape[0]
    cu = cu_seqlens.long()
    position = torch.arange(tokens, device=q.device)
    example = torch.searchsorted(cu[1:], position, right=True)
    offset = position - cu[example]
    count = cu.numel() - 1

    def block(x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros((count, max_seqlen, *x.shape[1:]))
        out[example, offset] = x
        return out.transpose(1, 2)  # (examples, heads, longest, dim)

    out = F.scaled_dot_product_attention(block(q), block(k), block(v), is_causal=True, scale=scale)
    return out.transpose(1, 2)[example, offset]


def varlen_attention_forward(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None, **kwargs
):
    """transformers' attention-function contract: (batch, heads, tokens, dim) in, (batch, tokens, heads,
    dim) out, plus the attention weights (never computed here)."""
    cu_seqlens = kwargs.get("cu_seq_lens_q")
    if cu_seqlens is None:
        raise ValueError(
            f"attention {NAME!r} serves padding-free batches and was called without their offsets "
            "(cu_seq_lens_q); load the model with attn_implementation='sdpa' for other inputs"
        )
    if query.shape[0] != 1:
        raise ValueError("padding-free attention expects one row holding every example")
    if kwargs.get("sliding_window"):
        raise ValueError(
            "attention: sliding-window layers are not supported with batching: padding_free; use "
            "batching: packed"
        )
    if dropout:
        raise ValueError("padding-free attention has no attention dropout; set the model's to 0")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # (tokens, heads, dim)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        # Grouped-query attention: every query head of a group reads the same key/value head. Repeating
        # the few key/value heads costs little and works with every release of the kernel.
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    max_seqlen = kwargs["max_length_q"]
    attend = varlen_flash if flash_usable(q) else varlen_padded_sdpa
    return attend(q, k, v, cu_seqlens, max_seqlen, scale)[None], None


def register() -> str:
    """Make NAME a valid `attn_implementation` for transformers models; returns NAME."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, varlen_attention_forward)
    return NAME
