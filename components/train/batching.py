"""Data order and batches: deterministic from (seed, epoch), so a resumed run sees the same batches.

Four layouts of a micro-batch of `batch_size` examples (`Config.batching`):

- padding_free: every example end to end in a single row, no padding anywhere; position ids restart at 0
  for each example and `cu_seqlens` (the examples' cumulative lengths) tells the variable-length attention
  kernel (varlen.py) where each one starts, so no example attends to another and no FLOP goes to padding;
- padded: one row per example, right-padded to the longest, with an attention mask;
- grouped: the same, but each batch holds examples of similar length (less padding): the epoch's shuffled
  order is cut into windows of 50 batches, sorted by length inside each window, then the batches are
  shuffled again so that long batches are not all at the end;
- packed: the examples are laid end to end in rows of at most `max_length` tokens (first fit, longest
  first) with position ids restarting at 0 for each example. transformers reads the restarts as sequence
  boundaries and builds a block-diagonal causal mask, so no example ever attends to another one.

Everything the loss needs is computed here, on the CPU, while the GPU runs the previous step: the flat
indices of the scored positions and their target tokens. The step then never asks the GPU which tokens
are scored (a boolean-mask index would wait for the GPU to finish before the next kernel is queued).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain

import torch

from components.train.data import IGNORE, Example

GROUP_WINDOW = 50


@dataclass
class Batch:
    input_ids: torch.Tensor  # (rows, width)
    labels: torch.Tensor  # (rows, width), IGNORE where unscored
    examples: list[Example]  # in the order their tokens appear, row by row
    # Which example of `examples` each token belongs to; -1 on padding.
    segment_ids: torch.Tensor
    attention_mask: torch.Tensor | None = None  # padded layouts
    position_ids: torch.Tensor | None = None  # packed and padding-free layouts
    # padding_free: int32 (examples + 1,) offsets of each example in the row, and the longest length.
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int = 0
    # Flat index (row * width + t) of every position t whose next token t + 1 is scored, and that token.
    scored_index: torch.Tensor = field(init=False)
    targets: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        rows, width = self.labels.shape
        following = self.labels[:, 1:]
        row, t = (following != IGNORE).nonzero(as_tuple=True)
        self.scored_index = row * width + t
        self.targets = following[row, t]

    @property
    def num_scored(self) -> int:
        return int(self.targets.numel())

    @property
    def num_tokens(self) -> int:
        return sum(len(e.input_ids) for e in self.examples)

    def model_inputs(self, device: torch.device) -> dict:
        """The keyword arguments of the decoder's forward pass, on `device`."""
        inputs = {"input_ids": to_device(self.input_ids, device)}
        if self.attention_mask is not None:
            inputs["attention_mask"] = to_device(self.attention_mask, device)
        if self.position_ids is not None:
            inputs["position_ids"] = to_device(self.position_ids, device)
        if self.cu_seqlens is not None:
            # The names transformers passes through to its attention functions (FlashAttentionKwargs).
            cu_seqlens = to_device(self.cu_seqlens, device)
            inputs.update(
                cu_seq_lens_q=cu_seqlens,
                cu_seq_lens_k=cu_seqlens,
                max_length_q=self.max_seqlen,
                max_length_k=self.max_seqlen,
            )
        return inputs

    def loss_inputs(self, device: torch.device) -> dict[str, torch.Tensor]:
        return {
            "scored_index": to_device(self.scored_index, device),
            "targets": to_device(self.targets, device),
            "segment_ids": to_device(self.segment_ids, device),
        }


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy to the GPU without making the host wait: pinned memory allows an asynchronous copy."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def epoch_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = False
) -> list[list[int]]:
    """Example indices of every micro-batch of one epoch, in order; the last one may be short."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    window = batch_size * GROUP_WINDOW
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def collate_padded(examples: Sequence[Example], pad_id: int) -> Batch:
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    segments = torch.full((len(examples), width), -1, dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        segments[row, :n] = row
    return Batch(input_ids, labels, list(examples), segments, attention_mask=(segments >= 0).long())


def pack_rows(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """First-fit-decreasing bins of example indices, each bin's total length at most max_length."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True):
        for row, free in enumerate(room):
            if lengths[index] <= free:
                rows[row].append(index)
                room[row] -= lengths[index]
                break
        else:
            rows.append([index])
            room.append(max_length - lengths[index])
    return rows


def collate_packed(examples: Sequence[Example], pad_id: int, max_length: int) -> Batch:
    rows = pack_rows([len(e.input_ids) for e in examples], max_length)
    width = max(sum(len(examples[i].input_ids) for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)
    # Padding continues as one more "sequence" starting at 0: it attends only to itself and is unscored.
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    ordered = []
    for r, row in enumerate(rows):
        start = 0
        for index in row:
            example = examples[index]
            n = len(example.input_ids)
            input_ids[r, start : start + n] = torch.tensor(example.input_ids)
            labels[r, start : start + n] = torch.tensor(example.labels)
            # The first token of an example must never be a target of the previous example's last one.
            labels[r, start] = IGNORE
            positions[r, start : start + n] = torch.arange(n)
            segments[r, start : start + n] = len(ordered)
            ordered.append(example)
            start += n
        positions[r, start:] = torch.arange(width - start)
    return Batch(input_ids, labels, ordered, segments, position_ids=positions)


def collate_padding_free(examples: Sequence[Example]) -> Batch:
    lengths = torch.tensor([len(e.input_ids) for e in examples])
    input_ids = torch.tensor(list(chain.from_iterable(e.input_ids for e in examples)))
    labels = torch.tensor(list(chain.from_iterable(e.labels for e in examples)))
    cu_seqlens = torch.zeros(len(examples) + 1, dtype=torch.int32)
    cu_seqlens[1:] = lengths.cumsum(0)
    starts = cu_seqlens[:-1].long()
    # The first token of an example must never be a target of the previous example's last one.
    labels[starts] = IGNORE
    segments = torch.repeat_interleave(torch.arange(len(examples)), lengths)
    positions = torch.arange(len(input_ids)) - starts[segments]
    return Batch(
        input_ids[None],
        labels[None],
        list(examples),
        segments[None],
        position_ids=positions[None],
        cu_seqlens=cu_seqlens,
        max_seqlen=int(lengths.max()),
    )


def collate(examples: Sequence[Example], pad_id: int, layout: str, max_length: int) -> Batch:
    if layout == "padding_free":
        return collate_padding_free(examples)
    if layout == "packed":
        return collate_packed(examples, pad_id, max_length)
    return collate_padded(examples, pad_id)


class BatchStream:
    """The endless sequence of micro-batches over `examples`: epoch after epoch, each freshly shuffled.

    Micro-batch `index` is always the same examples for the same seed, so a resumed run continues with
    exactly the batches the interrupted one would have seen next.
    """

    def __init__(self, examples: Sequence[Example], batch_size: int, seed: int, group_by_length: bool):
        self.examples = list(examples)
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self._lengths = [len(e.input_ids) for e in self.examples]
        self._epoch = -1
        self._plan: list[list[int]] = []

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.examples) // self.batch_size)

    def get(self, index: int) -> list[Example]:
        epoch, position = divmod(index, self.batches_per_epoch)
        if epoch != self._epoch:
            self._plan = epoch_batches(self._lengths, self.batch_size, self.seed, epoch, self.group_by_length)
            self._epoch = epoch
        return [self.examples[i] for i in self._plan[position]]
