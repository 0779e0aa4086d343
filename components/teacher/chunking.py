"""Raw text into chunks that end on sentence boundaries, in Chinese as in English.

A sentence ends after 。！？!?… (with any closing quotes or brackets that follow), after . ; ；when
whitespace follows, and at a newline. Chunks gather whole sentences up to `chunk_chars`; a sentence
longer than that on its own is cut at `chunk_chars`. `overlap_chars` repeats the last whole sentences of
a chunk (at most that many characters) at the start of the next, so no thought is cut in two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Zero-width split points: after a terminator (and its closing quotes), or after a newline.
_BOUNDARY = re.compile(
    r"(?<=[。！？!?…][”’」』）)\"'])|(?<=[。！？!?…])(?![”’」』）)\"'。！？!?…])|(?<=[.;；])(?=\s)|(?<=\n)"
)


@dataclass
class Chunk:
    text: str
    line: int  # 1-based line of the file where the chunk starts


def split_sentences(text: str) -> list[str]:
    """Sentences with their terminators and trailing whitespace, concatenating back to `text`."""
    return [piece for piece in _BOUNDARY.split(text) if piece]


def chunk_text(text: str, chunk_chars: int, overlap_chars: int = 0) -> list[Chunk]:
    """Chunks of at most `chunk_chars` characters (before stripping) that keep sentences whole.

    Linear in the length of the text: every step looks at one sentence, and line numbers are counted
    onward from the previous chunk's start instead of from the top of the file."""
    sentences: list[tuple[int, str]] = []  # (offset in text, sentence)
    offset = 0
    for sentence in split_sentences(text):
        for start in range(0, len(sentence), chunk_chars):
            sentences.append((offset + start, sentence[start : start + chunk_chars]))
        offset += len(sentence)

    chunks: list[Chunk] = []
    lines = _LineCounter(text)
    current: list[tuple[int, str]] = []
    size = 0
    for item in sentences:
        if current and size + len(item[1]) > chunk_chars:
            _emit(chunks, lines, current)
            current = _overlap(current, overlap_chars, chunk_chars - len(item[1]))
            size = sum(len(s) for _, s in current)
        current.append(item)
        size += len(item[1])
    if current:
        _emit(chunks, lines, current)
    return chunks


class _LineCounter:
    """1-based line numbers of offsets into `text`, each counted from the previous offset asked for: chunk
    starts only move forward, so the whole text is scanned once."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.offset = 0
        self.line = 1

    def line_at(self, offset: int) -> int:
        if offset >= self.offset:
            self.line += self.text.count("\n", self.offset, offset)
        else:
            self.line -= self.text.count("\n", offset, self.offset)
        self.offset = offset
        return self.line


def _overlap(sentences: list[tuple[int, str]], overlap_chars: int, room: int) -> list[tuple[int, str]]:
    """The trailing whole sentences of a chunk that fit in the overlap and leave room for the next one."""
    kept: list[tuple[int, str]] = []
    size = 0
    for item in reversed(sentences):
        if size + len(item[1]) > min(overlap_chars, room):
            break
        kept.append(item)
        size += len(item[1])
    return kept[::-1]


def _emit(chunks: list[Chunk], lines: _LineCounter, sentences: list[tuple[int, str]]) -> None:
    body = "".join(s for _, s in sentences)
    if not body.strip():
        return
    start = sentences[0][0] + (len(body) - len(body.lstrip()))
    chunks.append(Chunk(text=body.strip(), line=lines.line_at(start)))
