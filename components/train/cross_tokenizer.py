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
import re
from dataclasses import dataclass, field
from functools import lru_cache


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
    examples: list[str] = field(default_factory=list)  # a few unaligned record ids

    def add(self, other: AlignmentCounts) -> None:
        for name in (
            "records",
            "unaligned_records",
            "missing_records",
            "matched_positions",
            "sorted_positions",
            "uncovered_positions",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.examples = (self.examples + other.examples)[:3]

    def summary(self) -> dict:
        return {
            "records": self.records,
            "unaligned_records": self.unaligned_records,
            "missing_records": self.missing_records,
            "matched_positions": self.matched_positions,
            "sorted_positions": self.sorted_positions,
            "uncovered_positions": self.uncovered_positions,
        }


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


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class TokenBytes:
    """A tokenizer's id <-> bytes tables, read once from its vocabulary.

    Byte-level BPE vocabularies (GPT-2, Qwen, Llama 3) spell bytes with GPT-2's printable table; sentencepiece
    ones (Llama 2, Mistral) use U+2581 for a space and <0xNN> for raw bytes. Special tokens stand for their
    own text.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._first: dict[bytes, int | None] = {}
        inverse = {symbol: byte for byte, symbol in byte_symbols().items()}
        vocab = tokenizer.get_vocab()
        special = set(tokenizer.all_special_ids)
        byte_level = all(all(c in inverse for c in text) for text, i in vocab.items() if i not in special)
        self.of_id: dict[int, bytes] = {}
        for text, index in vocab.items():
            if index in special:
                self.of_id[index] = text.encode()
            elif byte_level:
                self.of_id[index] = bytes(inverse[c] for c in text)
            elif match := _BYTE_FALLBACK.fullmatch(text):
                self.of_id[index] = bytes([int(match[1], 16)])
            else:
                self.of_id[index] = text.replace("\u2581", " ").encode()
        # Special tokens never stand for plain text: a candidate "<|im_end|>" typed as text is not one.
        self.id_of: dict[bytes, int] = {b: i for i, b in self.of_id.items() if i not in special}
        self.id_of.update({b: i for i, b in self.of_id.items() if i in special and b not in self.id_of})

    def first_id(self, text: bytes) -> int | None:
        """The student token that `text` starts with in the student's own tokenization."""
        if text in self.id_of:
            return self.id_of[text]
        if text not in self._first:
            ids = self.tokenizer(text.decode("utf-8", errors="replace"), add_special_tokens=False)[
                "input_ids"
            ]
            self._first[text] = ids[0] if ids else None
        return self._first[text]

    def entry_bytes(self, entry: dict) -> bytes:
        """The bytes of one OpenAI logprobs entry ("token_id:N" entries are ids of this tokenizer)."""
        if entry.get("bytes") is not None:
            return bytes(entry["bytes"])
        text = entry.get("token", "")
        if text.startswith("token_id:"):
            return self.of_id.get(int(text.split(":", 1)[1]), b"")
        return text.encode()


@lru_cache(maxsize=4)
def token_bytes(tokenizer) -> TokenBytes:
    return TokenBytes(tokenizer)


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
    student_ids: list[int], entries: list[dict], student: TokenBytes
) -> tuple[list[TopK | None] | None, AlignmentCounts]:
    """Per scored student token (`student_ids`, in order) the teacher's TopK there, or None for none.

    `entries` are the teacher's OpenAI logprobs entries over the same text, in order. Returns (None, counts)
    when the two texts differ beyond one being a prefix of the other (the shorter side ends the alignment).
    """
    counts = AlignmentCounts(records=1)
    student_pieces = [student.of_id.get(i, b"") for i in student_ids]
    teacher_pieces = [student.entry_bytes(entry) for entry in entries]
    student_text, teacher_text = b"".join(student_pieces), b"".join(teacher_pieces)
    common = min(len(student_text), len(teacher_text))
    if not entries or student_text[:common] != teacher_text[:common]:
        counts.unaligned_records = 1
        return None, counts
    teacher_at = {start: (j, end) for j, (start, end) in enumerate(spans(teacher_pieces))}
    table: list[TopK | None] = []
    for start, end in spans(student_pieces):
        found = teacher_at.get(start) if end > start else None
        if found is None:
            table.append(None)
            counts.uncovered_positions += 1
            continue
        j, teacher_end = found
        candidates = entries[j].get("top_logprobs") or [entries[j]]
        if teacher_end == end:
            mass: dict[int, float] = {}
            for candidate in candidates:
                index = student.first_id(student.entry_bytes(candidate))
                if index is not None:
                    logprob = float(candidate["logprob"])
                    mass[index] = log_add(mass[index], logprob) if index in mass else logprob
            ids, logprobs = list(mass), list(mass.values())
            if not ids:  # no candidate is a student token: nothing to compare
                table.append(None)
                counts.uncovered_positions += 1
                continue
            table.append(TopK(ids, logprobs))
            counts.matched_positions += 1
        else:
            logprobs = sorted((float(c["logprob"]) for c in candidates), reverse=True)
            table.append(TopK([], logprobs, sorted_only=True))
            counts.sorted_positions += 1
    return table, counts
