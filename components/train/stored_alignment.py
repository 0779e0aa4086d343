"""`cross_tokenizer.align` for a record read from logprobs.parquet (`StoredPositions`), as array work when
the teacher's tokens are the student's: the common case, a same-family teacher.

There every teacher position spells the student token at the same place, so span i is span i on both
sides, every position matches, and each candidate is a student token of its own; the table is indexing
over the record's arrays, not one Python object per candidate (half a billion of them in a dataset of
100k records x 256 positions x top-20). A record where that does not hold for every position it
reaches (other tokens, a candidate that is no student token, two candidates on one student token, which
add up) goes through `align` on the same positions as objects, so both give one table.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from components.common.logprobs_file import StoredPositions, TokenTable
from components.common.token_bytes import TokenBytes
from components.train.cross_tokenizer import AlignmentCounts, align
from components.train.topk_store import PackedTopK


@dataclass(frozen=True, eq=False)
class StudentPieces:
    """Per student id, the id `TokenBytes.id_of` gives its bytes (-1: an id of no bytes), so two pieces
    spell the same bytes exactly when their ids here are equal."""

    spelling: np.ndarray


@lru_cache(maxsize=4)
def student_pieces(student: TokenBytes) -> StudentPieces:
    spelling = np.full(max(student.of_id, default=-1) + 1, -1, dtype=np.int64)
    for index, piece in student.of_id.items():
        if piece:
            spelling[index] = student.id_of[piece]
    return StudentPieces(spelling)


@lru_cache(maxsize=4)
def table_spelling(table: TokenTable, student: TokenBytes) -> np.ndarray:
    """Per entry of the file's token table, then one for an index outside it, the student id spelling
    exactly its bytes (-1: none), which is also the id `TokenBytes.first_id` maps it to."""
    spellable = table.spellable.tolist()
    spelling = [
        student.id_of.get(student.entry_bytes(table.entry(i, 0.0)), -1) if spellable[i] else -1
        for i in range(len(table))
    ]
    return np.array([*spelling, -1], dtype=np.int64)


def align_stored(
    student_ids: list[int], stored: StoredPositions, student: TokenBytes
) -> tuple[PackedTopK | None, AlignmentCounts]:
    """As `align(student_ids, stored.positions(), student)`, packed for the store."""
    packed = same_tokens(np.asarray(student_ids, dtype=np.int64), stored, student)
    if packed is not None:
        return packed
    table, counts = align(student_ids, stored.positions(), student)
    return (None if table is None else PackedTopK.of(table)), counts


def same_tokens(
    ids: np.ndarray, stored: StoredPositions, student: TokenBytes
) -> tuple[PackedTopK, AlignmentCounts] | None:
    """The table when each teacher position up to the student's end spells the student token at its
    place and every usable candidate is a distinct student token; None otherwise."""
    spelling = student_pieces(student).spelling
    if not len(stored.tokens) or (len(ids) and (ids.min() < 0 or ids.max() >= len(spelling))):
        return None
    student_spelling = spelling[ids]
    common = min(len(ids), len(stored.tokens))
    mapped = table_spelling(stored.table, student)
    if (student_spelling < 0).any() or not np.array_equal(
        mapped[stored.tokens[:common]], student_spelling[:common]
    ):
        return None
    ends = stored.alternative_ends[: common + 1]
    per_position = np.diff(ends)
    position = np.repeat(np.arange(common), per_position)
    tokens, values = stored.alternative_tokens[: ends[-1]], stored.alternative_logprobs[: ends[-1]]
    alone = np.flatnonzero(per_position == 0)
    if len(alone):  # no alternatives: the given token is the one candidate (TokenLogprob.candidates)
        order = np.argsort(np.concatenate([position, alone]), kind="stable")
        position = np.concatenate([position, alone])[order]
        tokens = np.concatenate([tokens, stored.tokens[alone]])[order]
        values = np.concatenate([values, stored.logprobs[alone]])[order]
    usable = ~stored.bad[position]
    position, candidates, values = position[usable], mapped[tokens[usable]], values[usable]
    keys = np.sort(position * len(spelling) + candidates)
    if (candidates < 0).any() or (keys[1:] == keys[:-1]).any():
        return None
    found = np.bincount(position, minlength=len(ids)).astype(np.int16)
    matched = int(np.count_nonzero(found))
    counts = AlignmentCounts(
        records=1,
        bad_positions=stored.bad_count,
        matched_positions=matched,
        uncovered_positions=len(ids) - matched,
        candidates=len(candidates),
    )
    packed = PackedTopK(
        found, np.zeros(len(ids), np.uint8), candidates.astype(np.int32), values.astype(np.float32)
    )
    return packed, counts
