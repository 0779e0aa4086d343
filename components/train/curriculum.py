"""Multi-phase curriculum: a list of phases, each with its own data mix, loss weights, learning rate and length.

    curriculum:
      - {name: general, mix: {main: 0.7, domain: 0.3}, num_epochs: 1, learning_rate: 2.0e-4}
      - {name: domain,  mix: {main: 0.3, domain: 0.7}, num_epochs: 2, kd_alpha: 0.8, temperature: 2.0}
    datasets: {domain: /data/domain-teacher}      # "main" is always data_dir; or s3://bucket/prefix

Phases run in order and each starts from the weights the previous one ended with (a fresh optimizer and
learning-rate schedule per phase). `start_phase`/`end_phase` run a slice, counted from 1: starting at phase 2 on a
fresh run trains phase 2 from the student as loaded. Without a curriculum the run is one phase built from the
top-level fields.

A phase's epoch holds `samples` records (default: as many as all its sources together), drawn from each
source in proportion to `mix`: source s contributes round(samples * mix[s] / sum(mix)) records, taken
without repetition while the source lasts, then cycled. The draw depends only on (seed, phase index).

A share written as a ramp, `mix: {main: {from: 0.3, to: 0.7}, general: 0.7}`, changes linearly over the
phase's micro-batches: at micro-batch i of n every record of the batch comes from source s with probability
share_s(t) / sum of shares(t), t = i / (n - 1), so the first batches hold about 30% main records and the
last about 70%. Each record's source and its index in that source come from a hash of (seed, phase,
position), so a resumed run draws the same batches (with replacement; the epoch has `samples` records).
A phase's datasets may live in the store: an s3:// location is fetched (train.jsonl, and test.jsonl and the
teacher's logprobs when present) into a scratch folder when training starts.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from components.common.logprobs_file import JSONL_NAME, PARQUET_NAME
from components.common.store import open_store
from components.train.batching import BatchStream
from components.train.data import Example
from components.train.losses import Divergence

TEACHER_DATA_FILES = ("train.jsonl", "test.jsonl", PARQUET_NAME, JSONL_NAME)


@dataclass
class PhasePlan:
    index: int
    name: str
    examples: list[Example]
    max_steps: int
    num_epochs: float
    batch_size: int
    learning_rate: float
    divergence: Divergence
    kd_alpha: float
    weights: dict[str, float]
    # The sources the phase draws from (their test.jsonl records are its held-out set).
    source_names: list[str] = field(default_factory=lambda: ["main"])
    # Set when a share of the mix ramps: each source's (first, last) share and the records per epoch.
    ramp: dict[str, tuple[float, float]] = field(default_factory=dict)
    sources: dict[str, list[Example]] = field(default_factory=dict)
    samples: int = 0
    # Share of each batch's prompts answered by the student's own samples (kd.kind on_policy).
    on_policy_fraction: float = 0.0

    def total_steps(self, batches_per_epoch: int, batches_per_step: int) -> int:
        if self.max_steps > 0:
            return self.max_steps
        return max(1, math.ceil(self.num_epochs * batches_per_epoch / batches_per_step))

    def stream(self, batch_size: int, seed: int, group_by_length: bool, batches_per_step: int):
        """The phase's micro-batches: a shuffled fixed mix, or a RampStream when a share ramps."""
        if not self.ramp:
            return BatchStream(self.examples, batch_size, seed, group_by_length)
        batches_per_epoch = -(-self.samples // batch_size)
        horizon = self.total_steps(batches_per_epoch, batches_per_step) * batches_per_step
        return RampStream(self.sources, self.ramp, batch_size, seed, batches_per_epoch, horizon)


class RampStream:
    """Micro-batches whose source mix moves linearly from each share's `from` to its `to` over `horizon`
    micro-batches (see the module docstring); batch `index` is a pure function of (seed, index)."""

    def __init__(self, sources, ramp, batch_size: int, seed: int, batches_per_epoch: int, horizon: int):
        self.sources = {name: sources[name] for name in sorted(ramp)}
        self.ramp = ramp
        self.batch_size = batch_size
        self.seed = seed
        self.batches_per_epoch = batches_per_epoch
        self.horizon = max(1, horizon)

    def shares(self, index: int) -> dict[str, float]:
        """Each source's share of micro-batch `index`, normalized to sum to 1."""
        t = min(1.0, index / max(1, self.horizon - 1))
        raw = {name: first + (last - first) * t for name, (first, last) in self.ramp.items()}
        total = sum(raw.values())
        return {name: value / total for name, value in raw.items()}

    def get(self, index: int) -> list[Example]:
        shares = self.shares(index)
        batch = []
        for slot in range(self.batch_size):
            point, pick = _uniform(self.seed, index, slot)
            for name, share in shares.items():
                point -= share
                if point < 0 or name == next(reversed(shares)):
                    pool = self.sources[name]
                    batch.append(pool[int(pick * len(pool))])
                    break
        return batch


def _uniform(seed: int, index: int, slot: int) -> tuple[float, float]:
    """Two numbers in [0, 1) from a hash of (seed, micro-batch, slot): the source and the record."""
    digest = hashlib.sha256(f"{seed}:{index}:{slot}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64, int.from_bytes(digest[8:16], "big") / 2**64


def source_folder(location: str, scratch: Path) -> Path:
    """A local teacher-data folder for `location`: itself, or its train/test records and the teacher's
    logprobs fetched from the store."""
    if not location.startswith("s3://"):
        return Path(location)
    store = open_store(location)
    target = scratch / hashlib.sha256(location.encode()).hexdigest()[:16]
    for name in TEACHER_DATA_FILES:
        if store.exists(name):
            store.download_file(name, target / name)
    return target


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


@dataclass(frozen=True)
class PhaseDefaults:
    """The run's values a curriculum phase inherits unless it sets its own (the whole run when there is
    no curriculum), and the seed its mix is drawn with."""

    max_steps: int = -1
    num_epochs: float = 1.0
    batch_size: int = 8
    learning_rate: float = 2e-4
    kd_alpha: float = 0.5
    weights: dict[str, float] = field(default_factory=dict)  # intermediate terms: hidden, attention, ...
    on_policy_fraction: float = 0.5
    seed: int = 0


def plan_phases(
    defaults: PhaseDefaults,
    curriculum: list,
    start_phase: int,
    end_phase: int,
    sources: dict[str, list[Example]],
    divergence: Divergence,
) -> list[PhasePlan]:
    """The phases of `curriculum` this run executes (start_phase to end_phase, counted from 1; 0: to the
    last), with every inherited value resolved."""
    weights = defaults.weights
    if not curriculum:
        return [
            PhasePlan(
                index=0,
                name="main",
                examples=sources["main"],
                max_steps=defaults.max_steps,
                num_epochs=defaults.num_epochs,
                batch_size=defaults.batch_size,
                learning_rate=defaults.learning_rate,
                divergence=divergence,
                kd_alpha=defaults.kd_alpha,
                weights=dict(weights),
                on_policy_fraction=defaults.on_policy_fraction,
            )
        ]
    plans = []
    for index in range(start_phase - 1, end_phase or len(curriculum)):
        phase = curriculum[index]
        ramp = {name: phase.share_range(name) for name in phase.mix}
        ramped = any(first != last for first, last in ramp.values())
        mix = {name: first for name, (first, _) in ramp.items()} or {"main": 1.0}
        samples = phase.samples or sum(len(sources[name]) for name in mix)
        plans.append(
            PhasePlan(
                index=index,
                name=phase.name,
                examples=[] if ramped else mix_examples(sources, mix, samples, defaults.seed * 7919 + index),
                source_names=sorted(mix),
                ramp=ramp if ramped else {},
                sources={name: sources[name] for name in mix} if ramped else {},
                samples=samples,
                max_steps=phase.max_steps,
                num_epochs=phase.num_epochs,
                batch_size=phase.batch_size or defaults.batch_size,
                learning_rate=phase.learning_rate or defaults.learning_rate,
                divergence=Divergence(
                    kind=divergence.kind,
                    beta=divergence.beta,
                    temperature=phase.temperature or divergence.temperature,
                    vocab_limit=divergence.vocab_limit,
                ),
                kd_alpha=defaults.kd_alpha if phase.kd_alpha is None else phase.kd_alpha,
                weights={
                    name: weights[name]
                    if getattr(phase, f"{name}_weight") is None
                    else getattr(phase, f"{name}_weight")
                    for name in weights
                },
                on_policy_fraction=defaults.on_policy_fraction
                if phase.on_policy_fraction is None
                else phase.on_policy_fraction,
            )
        )
    return plans
