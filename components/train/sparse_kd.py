"""Sparse top-k KD targets from the teacher's stored log-probabilities (no teacher model at train time).

Expected format: the teacher stage's logprobs.parquet (or an earlier version's logprobs.jsonl) beside
train.jsonl, or `extra["logprobs"]` of each record, one position per answer token in OpenAI's shape (components/common/logprobs.py, which also says
how a bad position is counted and skipped). The teacher's tokens need not be the
student's: cross_tokenizer.py lines both up by the bytes each token spells, so an API teacher with another
vocabulary (DeepSeek, Qwen-Max into a Llama student) still gives KD targets. The entries cover the scored
text of the example (the answer, or the think block then the answer with `reasoning: train`); the
end-of-turn token past their end has no teacher data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from itertools import chain
from typing import Any

import torch

from components.common.errors import InputError
from components.common.logprobs import Positions, read_positions
from components.common.logprobs_file import StoredPositions
from components.common.records import Record
from components.train.batching import Batch
from components.train.cross_tokenizer import AlignmentCounts, TopK, align, byte_symbols, token_bytes
from components.train.data import IGNORE, Example
from components.train.objective import SparseTargets
from components.train.stored_alignment import align_stored
from components.train.topk_store import TopKStore

__all__ = ["attach_topk", "byte_symbols", "scored_tokens", "sparse_targets"]

log = logging.getLogger(__name__)


def scored_tokens(example: Example) -> list[int]:
    return [label for label in example.labels[1:] if label != IGNORE]


def attach_topk(
    examples: list[Example],
    records: list[Record],
    tokenizer,
    stored: Iterable[tuple[str, Any]] = (),
    store: TopKStore | None = None,
) -> AlignmentCounts:
    """Fill `teacher_topk` of each example from its record's `extra["logprobs"]`, else from `stored`, the
    (record id, positions) pairs of the teacher's logprobs file, streamed (logprobs_file.stream_logprobs:
    a parquet file's records come as checked arrays, aligned by stored_alignment): each record's
    positions are aligned and packed into `store` as they come, so no more than one record's positions
    are ever held at once. Returns the counts."""
    store = store or TopKStore()
    student = token_bytes(tokenizer)
    waiting: dict[str, list[Example]] = {}
    for example in examples:
        waiting.setdefault(example.record_id, []).append(example)
    inline = ((record.id, record.extra["logprobs"]) for record in records if record.extra.get("logprobs"))
    total = AlignmentCounts()
    for record_id, raw in chain(inline, stored):
        read = None
        for example in waiting.pop(record_id, []):
            if isinstance(raw, StoredPositions):
                table, counts = align_stored(scored_tokens(example), raw, student)
            else:
                read = read or read_positions(raw)
                table, counts = align(scored_tokens(example), read, student)
            example.teacher_topk = None if table is None else store.put(table)
            if table is None:
                counts.examples = [example.record_id]
            total.add(counts)
    for _ in chain.from_iterable(waiting.values()):
        total.add(AlignmentCounts(records=1, missing_records=1))
    report(total, "sparse KD")
    if total.missing_records + total.unaligned_records == len(examples) and examples:
        raise InputError(
            "kd.kind: 'topk' needs the teacher's top_logprobs (logprobs.parquet beside train.jsonl, or "
            "extra['logprobs'] of the records), and no record has usable ones; ask the teacher stage for "
            "logprobs, or set kd.kind: none"
        )
    return total


def report(counts: AlignmentCounts, what: str) -> None:
    """One log line for the records and positions that train on cross-entropy only."""
    if counts.bad_positions:
        log.warning(
            "%s: %d teacher positions hold a logprob that is not finite and <= 0, bytes that are not "
            "ints 0..255, or more alternatives than asked: skipped, their tokens train on cross-entropy only",
            what,
            counts.bad_positions,
        )
    if counts.missing_records or counts.unaligned_records or counts.sorted_positions:
        log.warning(
            "%s: of %d records, %d have no teacher logprobs and %d a teacher text that differs from the "
            "student's (e.g. %s): those train on cross-entropy only; positions: %d matched, %d by sorted "
            "probabilities (token spans differ), %d without teacher data",
            what,
            counts.records,
            counts.missing_records,
            counts.unaligned_records,
            counts.examples,
            counts.matched_positions,
            counts.sorted_positions,
            counts.uncovered_positions,
        )


def warn_if_sampled_only(counts: AlignmentCounts) -> None:
    """kd.kind topk with about one candidate per position trains on the sampled token alone."""
    aligned = counts.matched_positions + counts.sorted_positions
    if aligned and counts.mean_candidates < 2:
        log.warning(
            "kd.kind topk: %.2f teacher candidates per aligned position, the stored logprobs hold only "
            "the sampled token; ask the teacher stage for provider.top_logprobs (e.g. 20)",
            counts.mean_candidates,
        )


def sparse_targets(batch: Batch, device: torch.device) -> SparseTargets:
    """(N, k) tensors over the batch's scored positions, in the order the objective flattens them."""
    rows: list[TopK | None] = []
    for example in batch.examples:
        count = len(scored_tokens(example))
        table = list(example.teacher_topk or [])
        rows += [table[j] if j < len(table) else None for j in range(count)]
    return targets_tensor(rows, device)


def targets_tensor(rows: list[TopK | None], device: torch.device) -> SparseTargets:
    k = max([len(row.logprobs) for row in rows if row is not None] or [1])
    ids = torch.zeros((len(rows), k), dtype=torch.long)
    logprobs = torch.full((len(rows), k), float("-inf"))
    mask = torch.zeros(len(rows))
    sorted_only = torch.zeros(len(rows), dtype=torch.bool)
    for position, row in enumerate(rows):
        if row is None or not row.logprobs:
            continue
        if row.ids:
            ids[position, : len(row.ids)] = torch.tensor(row.ids)
        logprobs[position, : len(row.logprobs)] = torch.tensor(row.logprobs)
        mask[position] = 1.0
        sorted_only[position] = row.sorted_only
    return SparseTargets(ids.to(device), logprobs.to(device), mask.to(device), sorted_only.to(device))


def answer_ids(example: Example, tokenizer) -> list[int]:
    """The scored tokens of an example without its closing end-of-turn token: what a teacher scores."""
    ids = scored_tokens(example)
    while ids and ids[-1] in (tokenizer.eos_token_id, tokenizer.pad_token_id):
        ids = ids[:-1]
    return ids


def answer_text(example: Example, tokenizer) -> str:
    """`answer_ids` as text, for a teacher with another tokenizer."""
    ids = answer_ids(example, tokenizer)
    # A sample cut at max_new_tokens can end inside a character: dropping the partial bytes keeps the
    # teacher's text a prefix of the student's, which the alignment accepts.
    return b"".join(token_bytes(tokenizer).of_id.get(i, b"") for i in ids).decode("utf-8", errors="ignore")


def scored_targets(
    examples: list[Example], entries: list[Positions], tokenizer, device: torch.device
) -> tuple[SparseTargets, AlignmentCounts]:
    """Sparse targets of a batch from a teacher's entries over each example's scored text."""
    student = token_bytes(tokenizer)
    counts = AlignmentCounts()
    rows: list[TopK | None] = []
    for example, example_entries in zip(examples, entries, strict=True):
        scored = scored_tokens(example)
        table, one = align(scored, example_entries, student)
        if table is None:
            one.examples = [example.record_id]
        counts.add(one)
        table = table or []
        rows += [table[j] if j < len(table) else None for j in range(len(scored))]
    return targets_tensor(rows, device), counts
