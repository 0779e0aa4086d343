"""Multi-phase curriculum: a list of phases, each with its own data mix, loss weights, learning rate and length.

    curriculum:
      - {name: general, mix: {main: 0.7, domain: 0.3}, num_epochs: 1, learning_rate: 2.0e-4}
      - {name: domain,  mix: {main: 0.3, domain: 0.7}, num_epochs: 2, kd_alpha: 0.8, temperature: 2.0}
    datasets: {domain: /data/domain-teacher}      # "main" is always data_dir

Phases run in order and each starts from the weights the previous one ended with (a fresh optimizer and
learning-rate schedule per phase). `start_phase`/`end_phase` run a slice: starting at phase 1 on a fresh
run trains phase 1 from the student as loaded. Without a curriculum the run is one phase built from the
top-level fields.

A phase's epoch holds `samples` records (default: as many as all its sources together), drawn from each
source in proportion to `mix`: source s contributes round(samples * mix[s] / sum(mix)) records, taken
without repetition while the source lasts, then cycled. The draw depends only on (seed, phase index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from components.train.data import Example
from components.train.losses import Divergence


@dataclass
class PhasePlan:
    index: int
    name: str
    examples: list[Example]
    max_steps: int
    num_epochs: float
    learning_rate: float
    divergence: Divergence
    kd_alpha: float
    weights: dict[str, float]
    # Share of each batch's prompts answered by the student's own samples (kd.kind on_policy).
    on_policy_fraction: float = 0.0

    def total_steps(self, batches_per_epoch: int, batches_per_step: int) -> int:
        if self.max_steps > 0:
            return self.max_steps
        return max(1, math.ceil(self.num_epochs * batches_per_epoch / batches_per_step))


def mix_examples(
    sources: dict[str, list[Example]], mix: dict[str, float], samples: int, seed: int
) -> list[Example]:
    """One epoch's records for a phase: each source's share of `samples`, drawn deterministically."""
    total_weight = sum(mix.values())
    generator = torch.Generator().manual_seed(seed)
    chosen: list[Example] = []
    for name in sorted(mix):
        pool = sources[name]
        count = round(samples * mix[name] / total_weight)
        order = torch.randperm(len(pool), generator=generator).tolist()
        chosen += [pool[order[i % len(pool)]] for i in range(count)]
    return chosen


def plan_phases(config, sources: dict[str, list[Example]], divergence: Divergence) -> list[PhasePlan]:
    """The phases this run executes (after start_phase/end_phase), with every inherited value resolved."""
    weights = {
        "hidden": config.intermediate.hidden_weight,
        "attention": config.intermediate.attention_weight,
        "contrastive": config.intermediate.contrastive_weight,
    }
    if not config.curriculum:
        return [
            PhasePlan(
                index=0,
                name="main",
                examples=sources["main"],
                max_steps=config.max_steps,
                num_epochs=config.num_epochs,
                learning_rate=config.learning_rate,
                divergence=divergence,
                kd_alpha=config.kd.alpha,
                weights=weights,
                on_policy_fraction=config.kd.on_policy.fraction,
            )
        ]
    plans = []
    end = config.end_phase if config.end_phase >= 0 else len(config.curriculum) - 1
    for index in range(config.start_phase, end + 1):
        phase = config.curriculum[index]
        mix = phase.mix or {"main": 1.0}
        samples = phase.samples or sum(len(sources[name]) for name in mix)
        plans.append(
            PhasePlan(
                index=index,
                name=phase.name,
                examples=mix_examples(sources, mix, samples, config.seed * 7919 + index),
                max_steps=phase.max_steps,
                num_epochs=phase.num_epochs,
                learning_rate=phase.learning_rate or config.learning_rate,
                divergence=Divergence(
                    kind=divergence.kind,
                    beta=divergence.beta,
                    temperature=phase.temperature or divergence.temperature,
                    vocab_limit=divergence.vocab_limit,
                ),
                kd_alpha=config.kd.alpha if phase.kd_alpha is None else phase.kd_alpha,
                weights={
                    name: weights[name]
                    if getattr(phase, f"{name}_weight") is None
                    else getattr(phase, f"{name}_weight")
                    for name in weights
                },
                on_policy_fraction=config.kd.on_policy.fraction
                if phase.on_policy_fraction is None
                else phase.on_policy_fraction,
            )
        )
    return plans
