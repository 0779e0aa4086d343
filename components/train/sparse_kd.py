"""Sparse top-k KD targets from the teacher's stored log-probabilities (no teacher model at train time).

Expected format: the teacher stage stores the OpenAI-compatible `choices[0].logprobs.content` list of the
answer under `extra["logprobs"]` of each record, one entry per generated token, in order:

    {"token": "ol", "logprob": -0.01, "bytes": [111, 108],
     "top_logprobs": [{"token": "ol", "logprob": -0.01, "bytes": [111, 108]}, {"token": "o", ...}, ...]}

(vLLM: request `logprobs: true, top_logprobs: k`; with `return_tokens_as_token_ids` the tokens read
"token_id:1234", which is used as is.) Token strings are mapped to the student's ids through their UTF-8
bytes (byte-level BPE vocabularies such as Qwen's, GPT-2's) or the string itself.

Entry j must be the teacher's distribution for the j-th scored token of the example (the answer, or the
think block then the answer with `reasoning: train`): the records' sampled tokens are checked against the
student's tokens, and a record where they differ (another tokenizer, a template that changed the text)
trains on cross-entropy only, counted in the log. Scored positions past the end of the list (the
end-of-turn token) have no teacher data either.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

import torch

from components.common.records import Record
from components.train.batching import Batch
from components.train.data import IGNORE, Example
from components.train.objective import SparseTargets

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def byte_symbols() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which byte-level BPE vocabularies are spelled in.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are shifted to chr(256 + n).
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


class TokenMap:
    """OpenAI logprobs entries -> student token ids (the vocabulary is read once: Qwen's has 151k)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.vocab = tokenizer.get_vocab()

    def __call__(self, entry: dict) -> int | None:
        return token_id(self.tokenizer, self.vocab, entry)


def token_id(tokenizer, vocab: dict[str, int], entry: dict) -> int | None:
    """The student id of one OpenAI logprobs entry, or None when the student has no such token."""
    text = entry.get("token", "")
    if text.startswith("token_id:"):
        return int(text.split(":", 1)[1])
    if entry.get("bytes") is not None:
        alphabet = byte_symbols()
        symbol = "".join(alphabet[b] for b in entry["bytes"])
        if symbol in vocab:
            return vocab[symbol]
    if text in vocab:
        return vocab[text]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def scored_tokens(example: Example) -> list[int]:
    return [label for label in example.labels[1:] if label != IGNORE]


def topk_for(
    example: Example, entries: list[dict], to_id: TokenMap
) -> list[tuple[list[int], list[float]]] | None:
    """Per scored position (ids, logprobs) of the teacher's top-k, or None when the tokens disagree."""
    targets = scored_tokens(example)
    table = []
    for position, entry in enumerate(entries[: len(targets)]):
        if to_id(entry) != targets[position]:
            return None
        ids, logprobs = [], []
        for candidate in entry.get("top_logprobs") or [entry]:
            candidate_id = to_id(candidate)
            if candidate_id is not None and candidate_id not in ids:
                ids.append(candidate_id)
                logprobs.append(float(candidate["logprob"]))
        table.append((ids, logprobs))
    return table


def join_logprobs_file(records: list[Record], path: Path) -> None:
    """Put the teacher stage's logprobs.jsonl ({"id", "logprobs"} per line, beside train.jsonl) into
    each record's extra["logprobs"], where attach_topk reads them."""
    if not path.is_file():
        return
    by_id = {record.id: record for record in records}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            entry = json.loads(line)
            if entry.get("id") in by_id and not by_id[entry["id"]].extra.get("logprobs"):
                by_id[entry["id"]].extra["logprobs"] = entry["logprobs"]


def attach_topk(examples: list[Example], records: list[Record], tokenizer) -> None:
    """Fill `teacher_topk` of each example from its record's `extra["logprobs"]`."""
    by_id = {record.id: record for record in records}
    to_id = TokenMap(tokenizer)
    missing = mismatched = 0
    for example in examples:
        entries = by_id[example.record_id].extra.get("logprobs")
        if not entries:
            missing += 1
            continue
        example.teacher_topk = topk_for(example, entries, to_id)
        mismatched += example.teacher_topk is None
    if missing or mismatched:
        log.warning(
            "sparse KD: %d of %d records have no extra['logprobs'] and %d have tokens that differ from the "
            "student's; those train on cross-entropy only",
            missing,
            len(examples),
            mismatched,
        )
    if missing + mismatched == len(examples) and examples:
        from components.common.errors import InputError

        raise InputError(
            "kd.kind: 'topk' needs the teacher's top_logprobs in extra['logprobs'] of the records, and no "
            "record has usable ones; ask the teacher stage for logprobs, or set kd.kind: none"
        )


def sparse_targets(batch: Batch, device: torch.device) -> SparseTargets:
    """(N, k) tensors over the batch's scored positions, in the order the objective flattens them."""
    rows: list[tuple[list[int], list[float]] | None] = []
    for example in batch.examples:
        count = len(scored_tokens(example))
        table = example.teacher_topk or []
        rows += [table[j] if j < len(table) else None for j in range(count)]
    k = max([len(row[0]) for row in rows if row is not None] or [1])
    ids = torch.zeros((len(rows), k), dtype=torch.long)
    logprobs = torch.full((len(rows), k), float("-inf"))
    mask = torch.zeros(len(rows))
    for position, row in enumerate(rows):
        if row is None:
            continue
        ids[position, : len(row[0])] = torch.tensor(row[0])
        logprobs[position, : len(row[1])] = torch.tensor(row[1])
        mask[position] = 1.0
    return SparseTargets(ids.to(device), logprobs.to(device), mask.to(device))
