"""The train stage reads logprobs.parquet as arrays: bad values in a batch are counted and skipped as the
object reader counts them, the aligned tables are the same, and no position becomes Python objects."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.common import logprobs, logprobs_file
from components.common.logprobs_file import (
    LogprobsWriter,
    read_logprobs,
    row_schema,
    stream_logprobs,
)
from components.common.records import read_records, write_records
from components.train.data import Encoder
from components.train.sparse_kd import attach_topk
from components.train.stage import run
from tests.train.conftest import logprobs_from_teacher


def spoil(path, edit) -> None:
    """Rewrites logprobs.parquet with `edit(rows)` applied to its rows, the footer's token table kept,
    as a file written past the teacher stage's checks would hold them."""
    file = pq.ParquetFile(path)
    footer = {k: v for k, v in file.metadata.metadata.items() if k.startswith(b"kfp_distill")}
    rows = file.read().to_pylist()
    edit(rows)
    table = pa.Table.from_pylist(rows, schema=row_schema().with_metadata(footer))
    pq.write_table(table, path, compression="zstd")


def test_a_batch_with_bad_values_and_unknown_token_indices_is_counted_and_skipped_as_arrays(
    make_config, reversal_data, tiny_teacher_dir, tiny_model_dir, tmp_path, monkeypatch
):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir)
    records = logprobs_from_teacher(read_records(reversal_data / "train.jsonl")[:12], tokenizer, teacher)
    data = tmp_path / "spoilt"
    write_records(data / "train.jsonl", [replace(r, extra={}) for r in records])
    with LogprobsWriter(data / "logprobs.parquet") as writer:
        for record in records:
            writer.add(record.id, record.extra["logprobs"])
    # Index len(table) and -7 are outside the token table; a bad index of the given token hides the
    # position's place in the text, so it and the positions after it are dropped.
    footer = pq.ParquetFile(data / "logprobs.parquet").metadata.metadata
    table_size = len(json.loads(footer[b"kfp_distill.tokens"])["token"])

    def edit(rows):
        rows[0]["top_logprob"][0][1] = 3.0
        rows[1]["logprob"][2] = math.nan
        rows[2]["top_token"][1][0] = table_size
        rows[4]["top_logprob"][0][0] = -math.inf
        rows[5]["token"][3] = -7

    spoil(data / "logprobs.parquet", edit)
    dropped = len(records[5].extra["logprobs"]) - 3
    as_objects = [0]
    read_position = logprobs.read_position

    def counted(*args):
        as_objects[0] += 1
        return read_position(*args)

    monkeypatch.setattr(logprobs, "read_position", counted)
    run(make_config(data_dir=str(data), output_dir=str(tmp_path / "out"), max_steps=1, kd={"kind": "topk"}))
    alignment = json.loads((tmp_path / "out" / "train_summary.json").read_text())["kd_alignment"]
    assert as_objects[0] == 0, "the train stage read parquet positions as objects"
    assert alignment["bad_positions"] == 4 + dropped
    assert alignment["missing_records"] == alignment["unaligned_records"] == 0

    tables = {}
    plain = read_records(data / "train.jsonl")
    for name, reader in (("objects", read_logprobs), ("arrays", stream_logprobs)):
        examples = [Encoder(tokenizer, 64).encode(record) for record in plain]
        counts = attach_topk(examples, plain, tokenizer, reader(data))
        tables[name] = counts.summary(), [list(example.teacher_topk) for example in examples]
    assert tables["arrays"] == tables["objects"]
    assert tables["arrays"][0] == alignment
    assert as_objects[0] > 0


def test_a_teacher_with_other_tokens_gives_the_same_tables_read_as_arrays(
    reversal_data, tiny_model_dir, tmp_path
):
    """Tokens of two bytes each (spans that differ from the student's) take the object path: the same
    matched, sorted-probability and uncovered positions either way."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    records = read_records(reversal_data / "train.jsonl")[:6]
    write_records(tmp_path / "train.jsonl", records)

    def entry(data: bytes, logprob: float) -> dict:
        return {"token": data.decode(errors="backslashreplace"), "logprob": logprob, "bytes": list(data)}

    with LogprobsWriter(tmp_path / "logprobs.parquet") as writer:
        for record in records:
            text = record.answer.encode()
            pieces = [text[i : i + 2] for i in range(0, len(text), 2)]
            top = [(-0.2, None), (-2.5, b"e"), (-3.5, b"xyz")]
            writer.add(
                record.id,
                [{**entry(p, -0.2), "top_logprobs": [entry(d or p, v) for v, d in top]} for p in pieces],
            )
    tables = {}
    for name, reader in (("objects", read_logprobs), ("arrays", stream_logprobs)):
        examples = [Encoder(tokenizer, 64).encode(record) for record in records]
        counts = attach_topk(examples, records, tokenizer, reader(tmp_path))
        tables[name] = counts.summary(), [list(example.teacher_topk) for example in examples]
    assert tables["arrays"] == tables["objects"]
    assert tables["arrays"][0]["sorted_positions"] > 0 and tables["arrays"][0]["matched_positions"] > 0


def test_reading_holds_about_one_row_group_not_the_file_read_so_far(tmp_path, monkeypatch):
    """pyarrow's pre-buffering keeps each row group it has read: the reading would grow to the file."""
    monkeypatch.setattr(logprobs_file, "ROW_GROUP_RECORDS", 16)

    def entry(number: int, rank: int) -> dict:
        letter = 97 + (number * 7 + rank * 3) % 26
        return {"token": chr(letter), "logprob": -2.0 - rank - (number % 89) / 89, "bytes": [letter]}

    with LogprobsWriter(tmp_path / "logprobs.parquet") as writer:
        for number in range(3000):
            positions = [
                {**entry(number + p, 0), "top_logprobs": [entry(number + p, r) for r in range(4)]}
                for p in range(16)
            ]
            writer.add(f"r{number}", positions)
    before = held = pa.total_allocated_bytes()
    for _ in stream_logprobs(tmp_path):
        held = max(held, pa.total_allocated_bytes())
    assert held - before < (tmp_path / "logprobs.parquet").stat().st_size / 4
