"""Data order and batches: deterministic from (seed, epoch), so a resumed run sees the same batches.

Three layouts of a micro-batch of `batch_size` examples:

- padded: one row per example, right-padded to the longest, with an attention mask;
- grouped: the same, but each batch holds examples of similar length (less padding): the epoch's shuffled
  order is cut into windows of 50 batches, sorted by length inside each window, then the batches are
  shuffled again so that long batches are not all at the end;
- packed: the examples are laid end to end in rows of at most `max_length` tokens (first fit, longest
  first) with position ids restarting at 0 for each example. transformers reads the restarts as sequence
  boundaries and builds a block-diagonal causal mask, so no example ever attends to another one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from components.train.data import IGNORE, Example

GROUP_WINDOW = 50


@dataclass
class Batch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    examples: list[Example]
    # Packed rows have no attention mask (position ids mark the records); this marks their real tokens.
    packed_mask: torch.Tensor | None = None

    @property
    def num_scored(self) -> int:
        # Positions t whose next token t+1 is scored: that is what the loss counts.
        return int((self.labels[:, 1:] != IGNORE).sum())

    @property
    def num_tokens(self) -> int:
        if self.attention_mask is not None:
            return int(self.attention_mask.sum())
        return sum(len(e.input_ids) for e in self.examples)

    @property
    def token_mask(self) -> torch.Tensor:
        """1 on real tokens, 0 on padding (with packing, only a row's tail is padding)."""
        return self.attention_mask if self.attention_mask is not None else self.packed_mask

    def model_inputs(self, device: torch.device) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": self.input_ids.to(device)}
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask.to(device)
        if self.position_ids is not None:
            inputs["position_ids"] = self.position_ids.to(device)
        return inputs


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
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention[row, :n] = 1
    return Batch(input_ids, labels, attention, None, list(examples))


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
    # Padding continues as one more "sequence" starting at 0: it attends only to itself and is unscored.
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    real = torch.zeros((len(rows), width), dtype=torch.long)
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
            ordered.append(example)
            start += n
        positions[r, start:] = torch.arange(width - start)
        real[r, :start] = 1
    return Batch(input_ids, labels, None, positions, ordered, real)


def collate(examples: Sequence[Example], pad_id: int, packing: bool, max_length: int) -> Batch:
    if packing:
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
