"""The teacher's per-token logprobs on disk: logprobs.parquet beside train.jsonl, streamed a row group at
a time, so neither stage holds every record's positions at once.

One row per record: its `id`, and per answer position the token's index in the file's token table and
its logprob, then the alternatives' indices and logprobs:

    id: string   token: list<int32>   logprob: list<float16>
    top_token: list<list<int32>>   top_logprob: list<list<float16>>

The token table (every distinct token and its exact bytes, components/common/logprobs.py) sits once in the
file's footer, so a position costs 6 bytes per candidate before zstd whichever teacher wrote it: token
strings and bytes from an API teacher, or a local teacher's vocabulary. Logprobs are stored as float16
rounded down, so a probability never grows and k alternatives never add up past 1 by rounding.

The train stage reads it as arrays (`stream_logprobs`): each batch is checked on whole columns, as
`read_positions` checks a teacher's reply, and each record comes back as a `StoredPositions`. At 100k
records x 256 positions x 20 alternatives that is half a billion candidates, hours as Python objects.
`read_logprobs` gives the contract's dict shape instead, for tools and tests. logprobs.jsonl (one
{"schema", "id", "logprobs"} a line, what earlier versions wrote) is still read, a line at a time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.common.errors import InputError
from components.common.logprobs import (
    LOGPROBS_SCHEMA,
    MAX_ALTERNATIVES,
    MAX_TOKEN_BYTES,
    PROBABILITY_SLACK,
    Alternative,
    Positions,
    TokenLogprob,
    valid_prefix,
)
from components.common.records import iter_jsonl

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

PARQUET_NAME = "logprobs.parquet"
JSONL_NAME = "logprobs.jsonl"
SCHEMA_KEY = b"kfp_distill.logprobs_schema"
TOKENS_KEY = b"kfp_distill.tokens"
# About 256 x 256 positions x 21 candidates x 6 bytes = 8 MB decoded per row group.
ROW_GROUP_RECORDS = 256
# Read a few records at a time: a row group's 1.3M candidates would take about 80 MB as Python numbers
# (`read_logprobs`), and its arrays about 20 MB more than 32 records' do (`stream_logprobs`).
READ_RECORDS = 32


@cache
def row_schema() -> pa.Schema:
    # numpy and pyarrow are imported where used: every image imports components.common, and only the
    # teacher and train images install them.
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),
            ("token", pa.list_(pa.int32())),
            ("logprob", pa.list_(pa.float16())),
            ("top_token", pa.list_(pa.list_(pa.int32()))),
            ("top_logprob", pa.list_(pa.list_(pa.float16()))),
        ]
    )


def rounded_down(values: list[float]) -> np.ndarray:
    """float16 values each no larger than the given one (e^-65504 is 0 as far as any loss can tell)."""
    import numpy as np

    exact = np.maximum(np.asarray(values, dtype=np.float64), float(np.finfo(np.float16).min))
    half = exact.astype(np.float16)
    above = half.astype(np.float64) > exact
    half[above] = np.nextafter(half[above], np.float16(-np.inf))
    return half


class LogprobsWriter:
    """Writes logprobs.parquet: `add` one record's positions (the contract's dicts), `close` writes the
    token table; a writer given nothing leaves no file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tokens: dict[tuple[str, bytes | None], int] = {}
        self.rows: list[tuple[str, list[TokenLogprob]]] = []
        self.writer: pq.ParquetWriter | None = None

    def __enter__(self) -> LogprobsWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def index(self, entry: Alternative | TokenLogprob) -> int:
        key = (entry.token, None if entry.bytes is None else bytes(entry.bytes))
        return self.tokens.setdefault(key, len(self.tokens))

    def add(self, record_id: str, positions: list[dict[str, Any]]) -> int:
        """Stores the positions up to the first unusable one (a journal is read back from a bucket);
        returns how many were left out."""
        kept, dropped, _ = valid_prefix(positions, MAX_ALTERNATIVES)
        if kept:
            self.rows.append((record_id, kept))
        if len(self.rows) >= ROW_GROUP_RECORDS:
            self.flush()
        return dropped

    def flush(self) -> None:
        import pyarrow.parquet as pq

        if not self.rows:
            return
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.path, row_schema(), compression="zstd")
        self.writer.write_table(self.row_group(), row_group_size=len(self.rows))
        self.rows = []

    def row_group(self) -> pa.Table:
        import pyarrow as pa

        ids, tokens, logprobs, top_tokens, top_logprobs = [], [], [], [], []
        position_ends, alternative_ends = [0], [0]
        for record_id, positions in self.rows:
            ids.append(record_id)
            for position in positions:
                tokens.append(self.index(position))
                logprobs.append(position.logprob)
                for alternative in position.top_logprobs:
                    top_tokens.append(self.index(alternative))
                    top_logprobs.append(alternative.logprob)
                alternative_ends.append(len(top_tokens))
            position_ends.append(len(tokens))
        per_record = pa.array(position_ends, pa.int32())
        per_position = pa.array(alternative_ends, pa.int32())
        return pa.Table.from_arrays(
            [
                pa.array(ids, pa.string()),
                pa.ListArray.from_arrays(per_record, pa.array(tokens, pa.int32())),
                pa.ListArray.from_arrays(per_record, pa.array(rounded_down(logprobs))),
                pa.ListArray.from_arrays(
                    per_record,
                    pa.ListArray.from_arrays(per_position, pa.array(top_tokens, pa.int32())),
                ),
                pa.ListArray.from_arrays(
                    per_record,
                    pa.ListArray.from_arrays(per_position, pa.array(rounded_down(top_logprobs))),
                ),
            ],
            schema=row_schema(),
        )

    def close(self) -> None:
        self.flush()
        if self.writer is None:
            return
        table = {
            "token": [token for token, _ in self.tokens],
            "bytes": [None if data is None else data.hex() for _, data in self.tokens],
        }
        self.writer.add_key_value_metadata(
            {SCHEMA_KEY: str(LOGPROBS_SCHEMA).encode(), TOKENS_KEY: json.dumps(table).encode()}
        )
        self.writer.close()
        self.writer = None


def read_logprobs(folder: Path) -> Iterator[tuple[str, Any]]:
    """(record id, its raw positions) for each record of the teacher logprobs in `folder`: the parquet
    file, else the JSONL of earlier versions, else nothing. Positions still need `read_positions`."""
    return logprobs_in(folder, records_of)


def stream_logprobs(folder: Path) -> Iterator[tuple[str, Any]]:
    """What the train stage reads: as `read_logprobs`, but a parquet file's records come checked, as
    `StoredPositions`; a JSONL line's positions still need `read_positions`."""
    return logprobs_in(folder, checked_records)


def logprobs_in(folder: Path, records: Callable[[pa.RecordBatch, TokenTable], Iterator]) -> Iterator:
    parquet, jsonl = Path(folder) / PARQUET_NAME, Path(folder) / JSONL_NAME
    if parquet.is_file():
        for batch, table in parquet_batches(parquet):
            yield from records(batch, table)
    elif jsonl.is_file():
        yield from read_jsonl(jsonl)


def read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    for number, line in iter_jsonl(path):
        check_schema(line.get("schema", LOGPROBS_SCHEMA), f"{path}:{number}")
        yield line.get("id"), line.get("logprobs")


def check_schema(schema: Any, where: str) -> None:
    if schema != LOGPROBS_SCHEMA:
        raise InputError(
            f"{where}: logprobs schema {schema!r}, this stage reads schema {LOGPROBS_SCHEMA}; run the "
            "teacher stage of this version again"
        )


@dataclass(eq=False)
class TokenTable:
    """The footer's token table: each token's text and exact bytes (None: not stored)."""

    tokens: list[Any]
    bytes: list[bytes | None]

    def __len__(self) -> int:
        return len(self.tokens)

    @cached_property
    def spellable(self) -> np.ndarray:
        """Per entry, then one more for any index outside the table, whether a position may stand on it:
        a string token whose bytes are at most MAX_TOKEN_BYTES long (`logprobs.span_of`)."""
        import numpy as np

        usable = [
            isinstance(token, str) and (data is None or len(data) <= MAX_TOKEN_BYTES)
            for token, data in zip(self.tokens, self.bytes, strict=True)
        ]
        return np.array([*usable, False], dtype=bool)

    def entry(self, index: int, logprob: float) -> Alternative:
        data = self.bytes[index]
        return Alternative(self.tokens[index], logprob, None if data is None else list(data))


def token_table(path: Path, metadata: dict[bytes, bytes]) -> TokenTable:
    """The footer's token table; a file without a readable one is refused."""
    schema = metadata.get(SCHEMA_KEY, b"").decode(errors="replace")
    check_schema(int(schema) if schema.isdigit() else schema, str(path))
    try:
        table = json.loads(metadata[TOKENS_KEY])
        data = [None if value is None else bytes.fromhex(value) for value in table["bytes"]]
        if len(data) != len(table["token"]):
            raise ValueError("as many tokens as bytes expected")
        return TokenTable(list(table["token"]), data)
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(
            f"{path}: the token table in the file's footer is unreadable ({error}); write the file with "
            "the teacher stage again"
        ) from None


def parquet_batches(path: Path) -> Iterator[tuple[pa.RecordBatch, TokenTable]]:
    """The file's rows READ_RECORDS at a time, with its token table; an unreadable file is refused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # pre_buffer keeps every row group it has read, compressed: the whole file by the end.
        file = pq.ParquetFile(path, pre_buffer=False)
        if not file.schema_arrow.equals(row_schema()):
            raise InputError(f"{path}: columns {file.schema_arrow.names} are not the logprobs layout")
        table = token_table(path, file.metadata.metadata or {})
        for batch in file.iter_batches(batch_size=READ_RECORDS):
            yield batch, table
    except (OSError, pa.ArrowException) as error:
        raise InputError(f"{path}: not a readable logprobs parquet file ({error})") from None


def flat(column: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(offsets from 0, values) of a list column."""
    offsets = column.offsets.to_numpy()
    return offsets - offsets[0], column.flatten()


@dataclass(frozen=True)
class Columns:
    """A batch's columns as flat arrays: positions `record_ends[r]:record_ends[r + 1]` are record r's,
    alternatives `alternative_ends[p]:alternative_ends[p + 1]` position p's. A missing index is -1
    (outside the table), a missing logprob NaN: both make their position bad."""

    record_ends: np.ndarray
    tokens: np.ndarray
    logprobs: np.ndarray
    alternative_ends: np.ndarray
    alternative_tokens: np.ndarray
    alternative_logprobs: np.ndarray


def columns_of(batch: pa.RecordBatch) -> Columns:
    import numpy as np
    import pyarrow.compute as pc

    record_ends, tokens = flat(batch.column("token"))
    _, logprobs = flat(batch.column("logprob"))
    top_record_ends, top = flat(batch.column("top_token"))
    alternative_ends, top_tokens = flat(top)
    logprob_record_ends, top_logprob_lists = flat(batch.column("top_logprob"))
    logprob_alternative_ends, top_logprobs = flat(top_logprob_lists)
    if not (
        np.array_equal(record_ends, top_record_ends)
        and np.array_equal(record_ends, logprob_record_ends)
        and np.array_equal(alternative_ends, logprob_alternative_ends)
        and len(logprobs) == len(tokens)
    ):
        raise InputError("a logprobs row holds more positions or alternatives in one column than another")
    return Columns(
        record_ends,
        pc.fill_null(tokens, -1).to_numpy(),
        logprobs.to_numpy(zero_copy_only=False).astype(np.float64),
        alternative_ends,
        pc.fill_null(top_tokens, -1).to_numpy(),
        top_logprobs.to_numpy(zero_copy_only=False).astype(np.float64),
    )


def records_of(batch: pa.RecordBatch, table: TokenTable) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The batch's rows in the contract's dict shape; an index outside the table makes a position no
    token, which `read_positions` refuses."""
    found = columns_of(batch)
    tokens, top_tokens = found.tokens.tolist(), found.alternative_tokens.tolist()
    logprobs, top_logprobs = found.logprobs.tolist(), found.alternative_logprobs.tolist()
    record_ends, alternative_ends = found.record_ends.tolist(), found.alternative_ends.tolist()

    def entry(index: int, logprob: float) -> dict[str, Any]:
        if 0 <= index < len(table):
            return table.entry(index, logprob).to_dict()
        return {"token": None, "logprob": logprob, "bytes": None}

    for row, record_id in enumerate(batch.column("id").to_pylist()):
        positions = []
        for p in range(record_ends[row], record_ends[row + 1]):
            alternatives = range(alternative_ends[p], alternative_ends[p + 1])
            positions.append(
                {
                    **entry(tokens[p], logprobs[p]),
                    "top_logprobs": [entry(top_tokens[a], top_logprobs[a]) for a in alternatives],
                }
            )
        yield record_id, positions


@dataclass(frozen=True)
class StoredPositions:
    """One record's positions from logprobs.parquet, checked as `read_positions` checks a reply: the
    positions before the first one whose token is unknown (`dropped` counts that one and the rest), each
    marked `bad` when a value in it cannot be trained on. Arrays, not objects: see the module doc."""

    table: TokenTable
    tokens: np.ndarray  # table index per position
    logprobs: np.ndarray
    bad: np.ndarray  # bool per position
    dropped: int
    alternative_ends: np.ndarray  # from 0, one more than positions
    alternative_tokens: np.ndarray
    alternative_logprobs: np.ndarray

    @property
    def bad_count(self) -> int:
        return int(self.bad.sum()) + self.dropped

    def positions(self) -> Positions:
        """The same positions as objects, as `read_positions` gives them (a bad one without values)."""
        import numpy as np

        table, ends = self.table, self.alternative_ends.tolist()
        tokens, logprobs = self.tokens.tolist(), self.logprobs.tolist()
        alternatives, values = self.alternative_tokens.tolist(), self.alternative_logprobs.tolist()
        bad = set(np.flatnonzero(self.bad).tolist())
        read = Positions([], bad, self.dropped)
        for p, index in enumerate(tokens):
            given = table.entry(index, 0.0 if p in bad else logprobs[p])
            span = [] if p in bad else range(ends[p], ends[p + 1])
            top = [table.entry(alternatives[a], values[a]) for a in span]
            read.positions.append(TokenLogprob(given.token, given.logprob, given.bytes, top))
        return read


def checked_records(batch: pa.RecordBatch, table: TokenTable) -> Iterator[tuple[str, StoredPositions]]:
    """The batch's rows as `StoredPositions`, every value checked on the whole batch at once."""
    import numpy as np

    found = columns_of(batch)
    spellable = table.spellable

    def known(indices: np.ndarray) -> np.ndarray:
        inside = (indices >= 0) & (indices < len(table))
        return spellable[np.where(inside, indices, len(table))]

    def probability(values: np.ndarray) -> np.ndarray:
        return np.isfinite(values) & (values <= 0)

    ends = found.alternative_ends
    counts = np.diff(ends)
    alternative_ok = known(found.alternative_tokens) & probability(found.alternative_logprobs)
    failing = np.concatenate([[0], np.cumsum(~alternative_ok)])
    mass = np.zeros(len(counts))
    some = counts > 0
    if some.any():
        exp = np.exp(np.where(alternative_ok, found.alternative_logprobs, -np.inf))
        mass[some] = np.add.reduceat(exp, ends[:-1][some])
    bad = (
        ~probability(found.logprobs)
        | (failing[ends[1:]] > failing[ends[:-1]])
        | (counts > MAX_ALTERNATIVES)
        | (mass > 1 + PROBABILITY_SLACK)
    )
    unknown = ~known(found.tokens)
    for row, record_id in enumerate(batch.column("id").to_pylist()):
        start, end = found.record_ends[row], found.record_ends[row + 1]
        stops = np.flatnonzero(unknown[start:end])
        kept = start + (stops[0] if len(stops) else end - start)
        first, last = ends[start], ends[kept]
        yield (
            record_id,
            StoredPositions(
                table,
                found.tokens[start:kept],
                found.logprobs[start:kept],
                bad[start:kept],
                int(end - kept),
                ends[start : kept + 1] - first,
                found.alternative_tokens[first:last],
                found.alternative_logprobs[first:last],
            ),
        )
