"""`validation`: score a held-out validation file given by the run instead of the teacher data's test
split, as seed 004 evaluates its student on its own data/val.json (`--data_path data/val.json`).

The file (local, or s3://bucket/key fetched first) is JSON Lines or one JSON list. Each row is a record
as the teacher stage writes them (`messages`, ending in the answer the students are scored against), or
a labelled row of a teacher dataset format, read as the teacher stage reads it
(components/common/dataset_rows.py: its system text, an alpaca `input`, sharegpt turns): alpaca with its
`output`, sharegpt ending in the answer, or a prompt (`prompt` or `question`) with its `reference`,
`output`, `response` or `answer`. A labelled row's gold answer is both what the students are scored
against and the reference, as the seed's BLEU/ROUGE against its references do.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from components.common.dataset_rows import FORMATS_SHOWN, ROW_READERS, ChatRow, row_format
from components.common.errors import InputError
from components.common.records import Record, iter_jsonl, record_id
from components.common.store import open_store

# A prompt row may name its question and gold answer as other labelled datasets do.
QUESTION_KEY = "question"
ANSWER_KEYS = ("output", "response", "answer")
# Where each labelled format holds the gold answer, for the error of a row without one (a row with
# messages is read as a record).
GOLD_ANSWER_OF = {
    "prompts": "a 'reference', 'output', 'response' or 'answer' field",
    "alpaca": "an 'output' field",
    "sharegpt": "a 'gpt' turn after the last 'human' turn",
}
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
    """(row number, object) of a JSON list, or (line number, object) of JSON Lines."""
    if not holds_a_list(path):
        yield from iter_jsonl(path, f"validation: {shown}")
        return
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(f"validation: {shown} is not valid JSON ({error.msg})") from None
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise InputError(f"validation: {shown}: row {number} is not a JSON object")
        yield number, row


def holds_a_list(path: Path) -> bool:
    """Whether the file's first non-blank line opens a JSON list (else the file is JSON Lines)."""
    with path.open(encoding="utf-8") as handle:
        return next((line.lstrip().startswith("[") for line in handle if line.strip()), False)


def row_record(row: dict[str, Any], where: str) -> Record:
    if "messages" in row:
        record = Record.from_dict({"id": f"validation-{where}", **row}, where)
        if not record.answer:
            raise InputError(f"{where}: its messages end without the answer to score against")
        return record
    chat = labelled_chat(row, where)
    return Record(
        id=record_id(chat.messages, GOLD),
        messages=[*chat.messages, {"role": "assistant", "content": chat.reference}],
        reference=chat.reference,
        teacher=GOLD,
        split="test",
    )


def labelled_chat(row: dict[str, Any], where: str) -> ChatRow:
    """The row's prompt messages, as the teacher stage reads the row, and its gold answer."""
    fmt = row_format(row)
    if fmt is None and QUESTION_KEY in row:
        fmt, row = "prompts", {**row, "prompt": row[QUESTION_KEY]}
    if fmt is None:
        raise InputError(
            f"{where}: cannot tell the row's format; give it {FORMATS_SHOWN} with its gold answer; "
            f"it has {', '.join(sorted(row)) or 'no fields'}"
        )
    chat = ROW_READERS[fmt](row, where)
    answer = chat.reference or next((row[k] for k in ANSWER_KEYS if isinstance(row.get(k), str)), None)
    if not (answer and answer.strip()):
        raise InputError(f"{where}: has no gold answer to score against; give it {GOLD_ANSWER_OF[fmt]}")
    return ChatRow(chat.messages, answer)
