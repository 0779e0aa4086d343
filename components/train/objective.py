"""The loss of one micro-batch: the student's forward pass and every distillation term.

`DistillObjective` is the module the trainer hands to accelerate (and so to DDP or DeepSpeed): the student
plus any learned projections of the intermediate-layer terms, so that all trainable weights live in one
module and every one of them is reached through its `forward`. The frozen teacher runs outside it, under
`torch.no_grad()`, and its outputs come in as a `TeacherOutputs`.

Only positions whose next token is scored go through the output head (see losses.py): the prompt's
positions cost the decoder blocks but not the vocabulary projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from components.train.batching import Batch
from components.train.data import IGNORE
from components.train.losses import Divergence, chunked_token_losses
from components.train.modeling import backbone, base_model


@dataclass
class TeacherOutputs:
    """What a frozen local teacher computed for a batch, all without grad."""

    hidden: torch.Tensor  # (N, d_teacher): last hidden state at the scored positions
    head: nn.Module
    layers: tuple[torch.Tensor, ...] | None = None  # every layer's hidden states (intermediate terms)
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class SparseTargets:
    """The teacher's stored top-k log-probabilities at the scored positions (see sparse_kd.py)."""

    ids: torch.Tensor  # (N, k) token ids
    logprobs: torch.Tensor  # (N, k), -inf in unused slots
    mask: torch.Tensor  # (N,) 1.0 where the position has teacher data


def scored_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B, T-1) True where position t predicts a scored token t+1."""
    return labels[:, 1:] != IGNORE


def teacher_outputs(teacher, batch: Batch, device, layers: bool = False, attentions: bool = False):
    """Run the frozen teacher on `batch`; keep the scored positions' last hidden state."""
    with torch.no_grad():
        out = backbone(teacher)(
            **batch.model_inputs(device),
            use_cache=False,
            output_hidden_states=layers,
            output_attentions=attentions,
        )
        mask = scored_mask(batch.labels.to(device))
        hidden = out.last_hidden_state[:, :-1][mask]
    return TeacherOutputs(
        hidden=hidden,
        head=teacher.get_output_embeddings(),
        layers=out.hidden_states if layers else None,
        attentions=out.attentions if attentions else None,
    )


class DistillObjective(nn.Module):
    """Student (+ learned projections); `forward(batch)` returns summed token losses and extra terms."""

    def __init__(
        self,
        student,
        spec: Divergence,
        chunk_size: int,
        intermediate: nn.Module | None = None,
        logit_kd: bool = False,
    ):
        super().__init__()
        self.student = student
        # False when the teacher is there only for the intermediate terms: no KD over its logits.
        self.logit_kd = logit_kd
        self.spec = spec
        self.chunk_size = chunk_size
        self.intermediate = intermediate

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        teacher: TeacherOutputs | None = None,
        sparse: SparseTargets | None = None,
        token_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        wants_layers = self.intermediate is not None and teacher is not None
        wants_attn = wants_layers and self.intermediate.needs_attentions
        out = backbone(self.student)(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            # A KV cache is useless in training, and its presence turns off transformers' detection of
            # packed rows (position ids restarting at 0), which then would attend across records.
            use_cache=False,
            output_hidden_states=wants_layers,
            output_attentions=wants_attn,
        )
        mask = scored_mask(labels)
        hidden = out.last_hidden_state[:, :-1][mask]
        targets = labels[:, 1:][mask]
        ce, kd = chunked_token_losses(
            hidden,
            targets,
            base_model(self.student).get_output_embeddings(),
            self.chunk_size,
            teacher_hidden=teacher.hidden if teacher is not None and self.logit_kd else None,
            teacher_head=teacher.head if teacher is not None and self.logit_kd else None,
            topk_ids=None if sparse is None else sparse.ids,
            topk_logprobs=None if sparse is None else sparse.logprobs,
            topk_mask=None if sparse is None else sparse.mask,
            spec=self.spec,
        )
        terms = {"ce_sum": ce, "kd_sum": kd}
        if wants_layers:
            if token_mask is None:
                token_mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            terms.update(
                self.intermediate(
                    out.hidden_states, out.attentions, teacher.layers, teacher.attentions, token_mask
                )
            )
        return terms
