"""Aligned teacher distributions kept on a scratch file, read back one example at a time.

At 20 candidates a position the aligned top-k of a dataset outweighs its token ids many times over
(100k records x 256 positions x 20 candidates x (4-byte id + 4-byte logprob) = 4 GB as packed arrays, tens
of GB as Python lists), so the train stage writes each example's table here as it aligns it, and keeps
only where it lies. An example's table, packed:

    candidates per position (int16; 0: no teacher data)   sorted_only per position (uint8)
    ids of the matched positions' candidates (int32)      logprobs of every candidate (float32)
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from components.train.cross_tokenizer import TopK


@dataclass(frozen=True)
class PackedTopK:
    """One example's table in the store's layout (the module doc), before it is written."""

    counts: np.ndarray  # int16 per position
    sorted_only: np.ndarray  # uint8 per position
    ids: np.ndarray  # int32
    logprobs: np.ndarray  # float32

    @classmethod
    def of(cls, table: list[TopK | None]) -> PackedTopK:
        rows = [row for row in table if row is not None]
        return cls(
            np.array([len(row.logprobs) if row else 0 for row in table], dtype=np.int16),
            np.array([bool(row and row.sorted_only) for row in table], dtype=np.uint8),
            np.array([i for row in rows for i in row.ids], dtype=np.int32),
            np.array([v for row in rows for v in row.logprobs], dtype=np.float32),
        )


class TopKStore:
    """An unnamed scratch file, removed when the store and every table read from it are gone."""

    def __init__(self):
        self._file = tempfile.TemporaryFile(prefix="train-topk-")
        self._end = 0

    def put(self, table: list[TopK | None] | PackedTopK) -> StoredTopK:
        packed = table if isinstance(table, PackedTopK) else PackedTopK.of(table)
        blob = b"".join(
            values.tobytes() for values in (packed.counts, packed.sorted_only, packed.ids, packed.logprobs)
        )
        os.pwrite(self._file.fileno(), blob, self._end)
        stored = StoredTopK(self, self._end, len(packed.counts), len(packed.ids), len(packed.logprobs))
        self._end += len(blob)
        return stored

    @property
    def size(self) -> int:
        """Bytes written so far (the scratch file's size)."""
        return self._end

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._file.fileno(), size, offset)


class StoredTopK(Sequence):
    """One example's aligned table (`cross_tokenizer.align`), read from the store when used."""

    def __init__(self, store: TopKStore, offset: int, rows: int, ids: int, logprobs: int):
        self.store, self.offset = store, offset
        self.rows, self.ids, self.logprobs = rows, ids, logprobs

    def __len__(self) -> int:
        return self.rows

    def table(self) -> list[TopK | None]:
        n = self.rows
        blob = self.store.read(self.offset, 3 * n + 4 * self.ids + 4 * self.logprobs)
        counts = np.frombuffer(blob, np.int16, n).tolist()
        sorted_only = np.frombuffer(blob, np.uint8, n, 2 * n).tolist()
        ids = np.frombuffer(blob, np.int32, self.ids, 3 * n).tolist()
        logprobs = np.frombuffer(blob, np.float32, self.logprobs, 3 * n + 4 * self.ids).tolist()
        table: list[TopK | None] = []
        next_id = next_logprob = 0
        for count, sorted_row in zip(counts, sorted_only, strict=True):
            if not count:
                table.append(None)
                continue
            values = logprobs[next_logprob : next_logprob + count]
            next_logprob += count
            if sorted_row:
                table.append(TopK([], values, sorted_only=True))
            else:
                table.append(TopK(ids[next_id : next_id + count], values))
                next_id += count
        return table

    def __iter__(self) -> Iterator[TopK | None]:
        return iter(self.table())

    def __getitem__(self, index):
        return self.table()[index]
