"""Intermediate-layer distillation terms against a local teacher, with optional magnitude balancing.

- hidden: MSE between student block outputs, projected to the teacher's width by a learned linear map
  (one per mapped pair; identity when the widths match), and the mapped teacher block outputs (TinyBERT);
- attention: MSE between attention probability maps of mapped blocks, heads averaged when the head
  counts differ (MiniLM-style, needs the eager attention kernel);
- contrastive: InfoNCE between each record's mean-pooled student state (projected) and the teacher's;
  the batch's other records are the negatives (CRD-style). Records are told apart by the batch's segment
  ids, so this works whatever the layout (padded rows, packed rows or one padding-free row).

Layer map: pairs [student_block, teacher_block] with 1-based block indices (hidden_states[i] of transformers
is the output of block i; 0 is the embeddings). By default student block i maps to teacher block
round(i * L_teacher / L_student): a 2-block student on a 3-block teacher uses teacher blocks 2 (1.5 rounds
to 2) and 3.

Balancing (`balance: true`): each term is divided by the running mean of its own magnitude (an EMA with
momentum 0.99, detached), so a term contributes about its weight whatever its natural scale; the weights
then say how much each term matters instead of compensating for units.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MOMENTUM = 0.99


def default_layer_map(student_layers: int, teacher_layers: int) -> list[list[int]]:
    # int(x + 0.5) rounds halves up (Python's round() would send 1.5 to 2 but 2.5 to 2).
    return [[i, int(i * teacher_layers / student_layers + 0.5)] for i in range(1, student_layers + 1)]


class IntermediateLoss(nn.Module):
    TERMS = ("hidden", "attention", "contrastive")

    def __init__(self, settings, student_config, teacher_config):
        super().__init__()
        self.settings = settings
        s_layers, t_layers = student_config.num_hidden_layers, teacher_config.num_hidden_layers
        self.layer_map = settings.layer_map or default_layer_map(s_layers, t_layers)
        for s, t in self.layer_map:
            if not (0 <= s <= s_layers and 0 <= t <= t_layers):
                raise ValueError(
                    f"intermediate.layer_map: [{s}, {t}] is out of range; the student has blocks 1..{s_layers} "
                    f"and the teacher 1..{t_layers} (0 is the embeddings)"
                )
        s_width, t_width = student_config.hidden_size, teacher_config.hidden_size
        self.projections = nn.ModuleList(
            nn.Linear(s_width, t_width, bias=False) if s_width != t_width else nn.Identity()
            for _ in self.layer_map
        )
        self.pool_projection = nn.Linear(s_width, t_width, bias=False)
        self.weights = {
            "hidden": settings.hidden_weight,
            "attention": settings.attention_weight,
            "contrastive": settings.contrastive_weight,
        }
        self.register_buffer("running", torch.zeros(len(self.TERMS)))

    @property
    def needs_attentions(self) -> bool:
        return self.settings.attention_weight > 0

    def forward(self, s_hidden, s_attn, t_hidden, t_attn, segment_ids) -> dict[str, torch.Tensor]:
        """segment_ids (rows, width): the record each token belongs to, -1 on padding."""
        mask = (segment_ids >= 0).to(s_hidden[-1].dtype)
        raw: dict[str, torch.Tensor] = {}
        if self.weights["hidden"] > 0:
            raw["hidden"] = self.hidden_term(s_hidden, t_hidden, mask)
        if self.weights["attention"] > 0 and s_attn is not None:
            raw["attention"] = self.attention_term(s_attn, t_attn, mask)
        if self.weights["contrastive"] > 0:
            raw["contrastive"] = self.contrastive_term(s_hidden[-1], t_hidden[-1], segment_ids)
        return {
            f"{name}_loss": self.weights[name] * self.balanced(name, value) for name, value in raw.items()
        }

    def hidden_term(self, s_hidden, t_hidden, mask) -> torch.Tensor:
        total = 0.0
        for projection, (s, t) in zip(self.projections, self.layer_map, strict=True):
            diff = (projection(s_hidden[s].float()) - t_hidden[t].float()).pow(2).mean(-1)
            total = total + (diff * mask).sum() / mask.sum()
        return total / len(self.layer_map)

    def attention_term(self, s_attn, t_attn, mask) -> torch.Tensor:
        total = 0.0
        pairs = [(s, t) for s, t in self.layer_map if s >= 1 and t >= 1]
        for s, t in pairs:
            a_s, a_t = s_attn[s - 1].float(), t_attn[t - 1].float()
            if a_s.shape[1] != a_t.shape[1]:
                a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
            # Sum of squares over keys, mean over heads and unmasked query positions.
            per_query = (a_s - a_t).pow(2).sum(-1).mean(1)
            total = total + (per_query * mask).sum() / mask.sum()
        return total / max(1, len(pairs))

    def contrastive_term(self, s_last, t_last, segment_ids) -> torch.Tensor:
        records = int(segment_ids.max()) + 1
        if records < 2:
            return s_last.new_zeros((), dtype=torch.float32)
        # (records, tokens) averaging matrix: row r holds 1/len(r) on record r's tokens, 0 elsewhere.
        flat = segment_ids.flatten()
        member = F.one_hot(flat.clamp_min(0), records).T.float() * (flat >= 0).float()
        weights = member / member.sum(1, keepdim=True)
        s_pool = F.normalize(self.pool_projection(weights @ s_last.flatten(0, 1).float()), dim=-1)
        t_pool = F.normalize(weights @ t_last.flatten(0, 1).float(), dim=-1)
        logits = s_pool @ t_pool.T / self.settings.contrastive_temperature
        return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))

    def balanced(self, name: str, value: torch.Tensor) -> torch.Tensor:
        if not self.settings.balance:
            return value
        index = self.TERMS.index(name)
        magnitude = value.detach().abs()
        if self.training:
            running = self.running[index]
            self.running[index] = torch.where(
                running > 0, MOMENTUM * running + (1 - MOMENTUM) * magnitude, magnitude
            )
        return value / self.running[index].clamp_min(1e-8)
