"""The loss of one micro-batch: the student's forward pass and every distillation term.

`DistillObjective` is the module the trainer hands to accelerate (and so to DDP or DeepSpeed): the student
plus any learned projections of the intermediate-layer terms, so that all trainable weights live in one
module and every one of them is reached through its `forward`. The frozen teacher runs outside it, under
`torch.no_grad()`, and its outputs come in as a `TeacherOutputs`.

Only positions whose next token is scored go through the output head (see losses.py): the prompt's
positions cost the decoder blocks but not the vocabulary projection. Which positions those are comes from
the batch (computed on the CPU), so the step never waits on the GPU to find out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from components.train.losses import Divergence, token_losses
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
    # (N,) True where the teacher's tokens differ from the student's: sorted-probability loss (ULD)
    sorted_only: torch.Tensor | None = None


def scored_hidden(last_hidden_state: torch.Tensor, scored_index: torch.Tensor) -> torch.Tensor:
    """(N, d) hidden states at the scored positions; `scored_index` holds flat (row * width + t) indices."""
    return last_hidden_state.flatten(0, 1).index_select(0, scored_index)


def teacher_outputs(
    teacher, model_inputs: dict, scored_index: torch.Tensor, layers: bool = False, attentions: bool = False
) -> TeacherOutputs:
    """Run the frozen teacher on a batch (its `Batch.model_inputs`); keep the scored positions' last
    hidden state."""
    with torch.no_grad():
        out = backbone(teacher)(
            **model_inputs,
            use_cache=False,
            output_hidden_states=layers,
            output_attentions=attentions,
        )
        hidden = scored_hidden(out.last_hidden_state, scored_index)
    return TeacherOutputs(
        hidden=hidden,
        head=teacher.get_output_embeddings(),
        layers=out.hidden_states if layers else None,
        attentions=out.attentions if attentions else None,
    )


class DistillObjective(nn.Module):
    """Student (+ learned projections); `forward` returns the summed token loss and the extra terms."""

    def __init__(
        self,
        student,
        spec: Divergence,
        chunk_size: int,
        intermediate: nn.Module | None = None,
        logit_kd: bool = False,
        fused_loss: bool = True,
    ):
        super().__init__()
        self.student = student
        # False when the teacher is there only for the intermediate terms: no KD over its logits.
        self.logit_kd = logit_kd
        self.spec = spec
        self.chunk_size = chunk_size
        self.intermediate = intermediate
        # False under ZeRO-3 with a trainable head (see losses.py): recompute chunks in the backward pass.
        self.fused_loss = fused_loss

    def forward(
        self,
        input_ids: torch.Tensor,
        scored_index: torch.Tensor,
        targets: torch.Tensor,
        segment_ids: torch.Tensor,
        teacher: TeacherOutputs | None = None,
        sparse: SparseTargets | None = None,
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        **model_inputs,
    ) -> dict[str, torch.Tensor]:
        """`model_inputs`: the rest of Batch.model_inputs (masks, position ids, varlen offsets).

        Returns `loss` (ce_weight * CE + kd_weight * KD, summed over the scored tokens, differentiable),
        `ce_sum` and `kd_sum` (detached, for logging), and each intermediate term (a mean, weighted).
        """
        wants_layers = self.intermediate is not None and teacher is not None
        wants_attn = wants_layers and self.intermediate.needs_attentions
        out = backbone(self.student)(
            input_ids=input_ids,
            # A KV cache is useless in training, and its presence turns off transformers' detection of
            # packed rows (position ids restarting at 0), which then would attend across records.
            use_cache=False,
            output_hidden_states=wants_layers,
            output_attentions=wants_attn,
            **model_inputs,
        )
        kd_teacher = teacher if teacher is not None and self.logit_kd else None
        sums = token_losses(
            scored_hidden(out.last_hidden_state, scored_index),
            targets,
            base_model(self.student).get_output_embeddings(),
            self.chunk_size,
            ce_weight=ce_weight,
            kd_weight=kd_weight,
            teacher_hidden=None if kd_teacher is None else kd_teacher.hidden,
            teacher_head=None if kd_teacher is None else kd_teacher.head,
            topk_ids=None if sparse is None else sparse.ids,
            topk_logprobs=None if sparse is None else sparse.logprobs,
            topk_mask=None if sparse is None else sparse.mask,
            topk_sorted=None if sparse is None else sparse.sorted_only,
            spec=self.spec,
            fused=self.fused_loss,
        )
        terms = {"loss": sums.loss, "ce_sum": sums.ce_sum, "kd_sum": sums.kd_sum}
        if wants_layers:
            terms.update(
                self.intermediate(
                    out.hidden_states, out.attentions, teacher.layers, teacher.attentions, segment_ids
                )
            )
        return terms
