"""`validation`: score a held-out validation file given by the run instead of the teacher data's test
split, as seed 004 evaluates its student on its own data/val.json (`--data_path data/val.json`).

The file (local, or s3://bucket/key fetched first) is JSON Lines or one JSON list. Each row is a record
as the teacher stage writes them (`messages`, ending in the answer the students are scored against), or
a labelled row: alpaca (`instruction`, optional `input`, `output`) or a prompt (`prompt` or `question`
with `output`, `response` or `answer`). A labelled row's gold answer is both what the students are
scored against and the reference, as the seed's BLEU/ROUGE against its references do.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from components.common.errors import InputError
from components.common.records import Record, record_id
from components.common.store import open_store

PROMPT_KEYS = ("instruction", "prompt", "question")
ANSWER_KEYS = ("output", "response", "answer")
GOLD = {"provider": "dataset", "model": "validation"}


def validation_records(location: str) -> list[Record]:
    """Every row of the validation file at `location` as a record with an answer to score against."""
    with tempfile.TemporaryDirectory(prefix="eval-validation-") as scratch:
        path = local_file(location, Path(scratch))
        rows = list(read_rows(path, location))
    records = [row_record(row, f"validation {location}: row {number}") for number, row in rows]
    if not records:
        raise InputError(f"validation: {location} holds no rows; give a file of labelled prompts")
    return records


def local_file(location: str, scratch: Path) -> Path:
    if location.startswith("s3://"):
        folder, _, name = location.rpartition("/")
        if not name:
            raise InputError(
                f"validation: {location} names a folder; give the file, s3://bucket/path/val.json"
            )
        target = scratch / name
        open_store(folder).download_file(name, target)
        return target
    path = Path(location)
    if not path.is_file():
        raise InputError(
            f"validation: {location} is not a file; give a JSON or JSON Lines file of labelled rows"
        )
    return path


def read_rows(path: Path, shown: str):
    """(row number, object) of a JSON list or of JSON Lines."""
    text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else None
    except json.JSONDecodeError as error:
        raise InputError(f"validation: {shown} is not valid JSON ({error.msg})") from None
    if rows is None:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise InputError(f"validation: {shown}:{number}: not valid JSON ({error.msg})") from None
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise InputError(f"validation: {shown}: row {number} is not a JSON object")
        yield number, row


def row_record(row: dict[str, Any], where: str) -> Record:
    if "messages" in row:
        record = Record.from_dict({"id": f"validation-{where}", **row}, where)
        if not record.answer:
            raise InputError(f"{where}: its messages end without the answer to score against")
        return record
    prompt = next((row[key] for key in PROMPT_KEYS if isinstance(row.get(key), str) and row[key]), None)
    answer = next((row[key] for key in ANSWER_KEYS if isinstance(row.get(key), str) and row[key]), None)
    if prompt is None or answer is None:
        raise InputError(
            f"{where}: needs a prompt ({', '.join(PROMPT_KEYS)}) and its gold answer ({', '.join(ANSWER_KEYS)}), "
            f"or messages; it has {', '.join(sorted(row)) or 'no fields'}"
        )
    if isinstance(row.get("input"), str) and row["input"]:
        prompt = f"{prompt}\n\n{row['input']}"
    messages = [{"role": "user", "content": prompt}]
    return Record(
        id=record_id(messages, GOLD),
        messages=[*messages, {"role": "assistant", "content": answer}],
        reference=answer,
        teacher=GOLD,
        split="test",
    )
