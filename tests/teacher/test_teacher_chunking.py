"""Chunk line numbers are those of each chunk's first character, for any text, overlap and chunk size.

The time per megabyte staying flat from 4 to 16 MB (linear chunking) is measured by
bench/teacher_chunking.py, not here: a timed unit test would fail on a loaded machine.
"""

from __future__ import annotations

import itertools
import random

import pytest

from components.teacher.chunking import chunk_text


def unique_word_text(seed: int, sentences: int = 300) -> str:
    """Sentences of words that never repeat, so a chunk's text is found where it starts; with
    every terminator, runs of blank lines and sentences longer than a chunk."""
    rng = random.Random(seed)
    counter = itertools.count()
    parts = []
    for _ in range(sentences):
        words = " ".join(f"w{next(counter)}" for _ in range(rng.choice([1, 3, 8, 40])))
        parts.append(words + rng.choice([". ", "。", "！", "? ", ".\n", "\n\n\n", "; ", "…”", ".  \n  "]))
    return "".join(parts)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("chunk_chars", "overlap_chars"), [(16, 0), (60, 30), (200, 0), (200, 150)])
def test_each_chunk_starts_at_its_line_and_chunks_cover_the_text(seed, chunk_chars, overlap_chars):
    text = unique_word_text(seed)
    chunks = chunk_text(text, chunk_chars, overlap_chars)
    assert chunks
    start = 0
    for chunk in chunks:  # chunks start in text order, so each is searched for after the previous one
        start = text.index(chunk.text, start)
        assert chunk.line == text.count("\n", 0, start) + 1
    if overlap_chars == 0:  # without overlap the chunks are the text, less whitespace between them
        assert "".join("".join(c.text for c in chunks).split()) == "".join(text.split())
