"""What is worth asking and worth keeping: duplicate prompts out, length filters, a seeded train/test split.

Duplicates are removed before any request is made, so nobody pays for the same prompt twice. Exact
duplicates compare the prompt messages after normalising whitespace and case. Near duplicates compare
character 5-gram sets by MinHash (64 hashes, 16 bands of 4 rows, so pairs above about 0.6 Jaccard
become candidates) and confirm each candidate with the exact Jaccard similarity.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from components.teacher.readers import Prompt

_SPACE = re.compile(r"\s+")
NUM_HASHES, BANDS = 64, 16


@functools.lru_cache(maxsize=1)
def _masks():
    import numpy as np

    return np.array([random.Random(i).getrandbits(64) for i in range(NUM_HASHES)], dtype=np.uint64)


@dataclass
class FilterCounts:
    duplicates: int = 0
    near_duplicates: int = 0
    too_short: int = 0
    too_long: int = 0


def prompt_text(prompt: Prompt) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt.messages)


def _normal(text: str) -> str:
    return _SPACE.sub(" ", text).strip().lower()


def _shingles(text: str, size: int = 5) -> set[str]:
    text = _normal(text)
    return {text[i : i + size] for i in range(max(1, len(text) - size + 1))}


def _minhash(shingles: set[str]) -> list[int]:
    # One 64-bit hash per shingle, permuted by XOR with fixed random masks: cheap and good enough for LSH.
    # numpy does the shingles x 64 XOR-min in C: about 100 us for a 2,000-character prompt instead of 10 ms.
    import numpy as np

    digests = b"".join(hashlib.blake2b(s.encode(), digest_size=8).digest() for s in shingles)
    hashes = np.frombuffer(digests, dtype=">u8").astype(np.uint64)
    return (hashes[:, None] ^ _masks()[None, :]).min(axis=0).tolist()


def select_prompts(
    prompts: Iterable[Prompt],
    dedup: bool = True,
    near_dup_threshold: float | None = None,
    min_chars: int = 1,
    max_chars: int | None = None,
    counts: FilterCounts | None = None,
) -> Iterator[Prompt]:
    """The prompts kept, one at a time in their original order; the first of each duplicate group stays.
    Remembers a digest per prompt (and, for near duplicates, the kept prompts' shingles), not the prompts."""
    counts = counts if counts is not None else FilterCounts()
    seen: set[bytes] = set()
    buckets: dict[tuple[int, tuple[int, ...]], list[int]] = defaultdict(list)
    kept_shingles: list[set[str]] = []
    rows = NUM_HASHES // BANDS
    for prompt in prompts:
        # A prompt made from a raw-text chunk is measured by its chunk, not by the template around it.
        user_chars = prompt.source_chars or sum(
            len(m["content"]) for m in prompt.messages if m["role"] == "user"
        )
        if user_chars < min_chars:
            counts.too_short += 1
            continue
        if max_chars is not None and user_chars > max_chars:
            counts.too_long += 1
            continue
        text = prompt_text(prompt)
        if dedup:
            digest = hashlib.sha256(_normal(text).encode()).digest()
            if digest in seen:
                counts.duplicates += 1
                continue
            seen.add(digest)
        if near_dup_threshold is not None:
            shingles = _shingles(text)
            signature = _minhash(shingles)
            bands = [(b, tuple(signature[b * rows : (b + 1) * rows])) for b in range(BANDS)]
            candidates = {i for band in bands for i in buckets.get(band, ())}
            if any(_jaccard(shingles, kept_shingles[i]) >= near_dup_threshold for i in candidates):
                counts.near_duplicates += 1
                continue
            for band in bands:
                buckets[band].append(len(kept_shingles))
            kept_shingles.append(shingles)
        yield prompt


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def split_keys(keys: Iterable[str], test_ratio: float, seed: int) -> set[str]:
    """The keys that go to the test split: a seeded shuffle of the sorted keys, the first ceil(ratio*n).

    Sorting first makes the split depend only on which prompts exist, not on the order answers came in.
    """
    ordered = sorted(set(keys))
    random.Random(seed).shuffle(ordered)
    # ceil, so a small dataset still gets a test example; but always keep at least one for training.
    count = min(math.ceil(test_ratio * len(ordered)), max(len(ordered) - 1, 0))
    return set(ordered[:count])
