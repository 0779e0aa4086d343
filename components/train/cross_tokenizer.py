"""Teacher top-k distributions moved onto the student's tokens, whatever the two tokenizers are.

A teacher's distribution at one of its tokens says which text comes next, starting at the byte where that
token starts. Both token sequences spell the same text, so each token covers a byte span of it:

    text      "1234+"
    teacher   [12][34][+]          spans (0,2) (2,4) (4,5)
    student   [1][2][34][+]        spans (0,1) (1,2) (2,4) (4,5)

A student position whose span equals a teacher token's span ("match": (2,4) and (4,5) above) gets the
teacher's top-k candidates mapped to student ids: each candidate's text goes to the student token its text
starts with in the student's tokenization ("123" -> [12][3] -> "12"), candidates landing on one student
token add up, and the mass outside the top k stays in the "everything else" bucket of the sparse KL
(losses.sparse_forward_kl). With one tokenizer every position matches and every candidate maps to itself:
this is then plain sparse top-k KD.

A student position that starts where a teacher token starts but ends elsewhere ((0,1) above) predicts the
same next text in other units, so token ids cannot be compared; there the loss is ULD's (Boizard et al.
2024): the distance between the two distributions' probabilities sorted in decreasing order, which needs
no token correspondence (losses.sorted_probability_distance). A student position that starts inside a
teacher token ((1,2) above) has no teacher distribution and trains on cross-entropy only.

A record whose teacher text is not the student's text (a template that changed it) cannot be aligned: it is
counted, trains on cross-entropy only, and the count reaches the log and the train summary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from components.common.logprobs import Positions
from components.common.token_bytes import TokenBytes, byte_symbols, token_bytes

__all__ = ["AlignmentCounts", "TopK", "align", "byte_symbols", "token_bytes"]


@dataclass(frozen=True)
class TopK:
    """The teacher's distribution at one scored student position."""

    ids: list[int]  # student token ids (unused when `sorted_only`)
    logprobs: list[float]
    # True: the spans differ, compare sorted probabilities only (ULD); ids are empty.
    sorted_only: bool = False


@dataclass
class AlignmentCounts:
    """How much teacher signal the alignment kept, for the log and the train summary."""

    records: int = 0
    unaligned_records: int = 0  # teacher text differs from the student's: cross-entropy only
    missing_records: int = 0  # no teacher logprobs at all
    matched_positions: int = 0  # same span: top-k KD over mapped ids
    sorted_positions: int = 0  # same start, other end: sorted-probability (ULD) loss
    uncovered_positions: int = 0  # starts inside a teacher token, or past its text: cross-entropy only
    bad_positions: int = 0  # teacher positions with unusable values (logprobs.read_positions): skipped
    candidates: int = 0  # teacher candidates over all matched and sorted positions
    examples: list[str] = field(default_factory=list)  # a few unaligned record ids

    COUNTED = (
        "records",
        "unaligned_records",
        "missing_records",
        "matched_positions",
        "sorted_positions",
        "uncovered_positions",
        "bad_positions",
    )

    def add(self, other: AlignmentCounts) -> None:
        for name in (*self.COUNTED, "candidates"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.examples = (self.examples + other.examples)[:3]

    @property
    def mean_candidates(self) -> float:
        """Teacher candidates per aligned position: 1 means the stored logprobs hold only the sampled
        token, and top-k KD is then little more than cross-entropy on the teacher's text."""
        aligned = self.matched_positions + self.sorted_positions
        return self.candidates / aligned if aligned else 0.0

    def summary(self) -> dict:
        return {
            **{name: getattr(self, name) for name in self.COUNTED},
            "mean_candidates": round(self.mean_candidates, 3),
        }


def log_add(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) without underflow."""
    high, low = max(a, b), min(a, b)
    return high + math.log1p(math.exp(low - high))


def spans(pieces: list[bytes]) -> list[tuple[int, int]]:
    out, start = [], 0
    for piece in pieces:
        out.append((start, start + len(piece)))
        start += len(piece)
    return out


def align(
    student_ids: list[int], read: Positions, student: TokenBytes
) -> tuple[list[TopK | None] | None, AlignmentCounts]:
    """Per scored student token (`student_ids`, in order) the teacher's TopK there, or None for none.

    `read` holds the teacher's positions over the same text, in order (logprobs.read_positions). Returns
    (None, counts) when the two texts differ beyond one being a prefix of the other (the shorter side
    ends the alignment). A bad teacher position gives its student positions no teacher data.
    """
    counts = AlignmentCounts(records=1, bad_positions=read.bad_count)
    entries = read.positions
    student_pieces = [student.of_id.get(i, b"") for i in student_ids]
    teacher_pieces = [student.entry_bytes(entry) for entry in entries]
    student_text, teacher_text = b"".join(student_pieces), b"".join(teacher_pieces)
    common = min(len(student_text), len(teacher_text))
    if not entries:  # none readable
        counts.missing_records = 1
        return None, counts
    if student_text[:common] != teacher_text[:common]:
        counts.unaligned_records = 1
        return None, counts
    teacher_at = {start: (j, end) for j, (start, end) in enumerate(spans(teacher_pieces))}
    table: list[TopK | None] = []
    for start, end in spans(student_pieces):
        found = teacher_at.get(start) if end > start else None
        if found is None or found[0] in read.bad:
            table.append(None)
            counts.uncovered_positions += 1
            continue
        j, teacher_end = found
        candidates = entries[j].candidates
        if teacher_end == end:
            mass: dict[int, float] = {}
            for candidate in candidates:
                index = student.first_id(student.entry_bytes(candidate))
                if index is not None:
                    logprob = candidate.logprob
                    mass[index] = log_add(mass[index], logprob) if index in mass else logprob
            ids, logprobs = list(mass), list(mass.values())
            if not ids:  # no candidate is a student token: nothing to compare
                table.append(None)
                counts.uncovered_positions += 1
                continue
            table.append(TopK(ids, logprobs))
            counts.matched_positions += 1
        else:
            logprobs = sorted((c.logprob for c in candidates), reverse=True)
            table.append(TopK([], logprobs, sorted_only=True))
            counts.sorted_positions += 1
        counts.candidates += len(logprobs)
    return table, counts
