"""Distillation records: the contract between the teacher stage and the train/eval stages.

One JSON object per line:

    {"id": "3f2a…", "messages": [{"role": "system", …}, {"role": "user", …}, {"role": "assistant", …}],
     "reasoning": "…", "reference": "…", "teacher": {"provider": "deepseek", "model": "…", "params": {…}},
     "usage": {"prompt_tokens": 12, "completion_tokens": 40}, "judge": {…}, "split": "train", "schema": 1}

`schema` is the layout's version (RECORD_SCHEMA): a stage refuses records of a newer layout than it
reads. The teacher's per-token log-probabilities go beside them in logprobs.parquet
(components/common/logprobs.py, components/common/logprobs_file.py).

`id` is a stable hash of the prompt messages and the teacher settings, so the same prompt asked of the
same teacher always has the same id: resuming and caching key on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from components.common.errors import InputError

ROLES = ("system", "user", "assistant")
RECORD_SCHEMA = 1


def stable_hash(payload: Any, length: int = 32) -> str:
    """Hex digest of `payload` serialised canonically (sorted keys, no whitespace)."""
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def record_id(prompt_messages: list[dict[str, str]], teacher_settings: dict[str, Any]) -> str:
    return stable_hash({"messages": prompt_messages, "teacher": teacher_settings})


@dataclass
class Record:
    id: str
    messages: list[dict[str, str]]
    reasoning: str | None = None
    reference: str | None = None
    teacher: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)
    judge: dict[str, Any] | None = None
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    schema: int = RECORD_SCHEMA

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        """The messages before the final assistant answer."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            return self.messages[:-1]
        return self.messages

    @property
    def answer(self) -> str:
        """The final assistant answer, or '' when the record holds only a prompt."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            return self.messages[-1]["content"]
        return ""

    def to_json(self) -> str:
        # The fields as they are: asdict's deep copy cost most of a million-record finalize.
        values = ((f.name, getattr(self, f.name)) for f in fields(self))
        data = {k: v for k, v in values if v not in (None, {}) or k in ("id", "messages")}
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "record") -> Record:
        if not isinstance(data.get("id"), str) or not data["id"]:
            raise InputError(f"{where}: field 'id' must be a non-empty string")
        schema = data.get("schema", RECORD_SCHEMA)
        if type(schema) is not int or not 1 <= schema <= RECORD_SCHEMA:
            raise InputError(
                f"{where}: field 'schema' is {schema!r}, this stage reads record schema {RECORD_SCHEMA} or "
                "older; run it with the version that wrote the records"
            )
        messages = data.get("messages")
        validate_messages(messages, where)
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**{k: v for k, v in data.items() if k in known}, extra={**data.get("extra", {}), **extra})


def validate_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise InputError(f"{where}: field 'messages' must be a non-empty list of chat messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise InputError(f"{where}: messages[{i}] needs a role of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise InputError(f"{where}: messages[{i}].content must be a string")


def iter_jsonl(path: Path, shown: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; a bad line raises with file and line, the file
    named `shown` (default: its path; a copy fetched from a bucket is named by where it came from)."""
    path = Path(path)
    shown = shown or str(path)
    if not path.is_file():
        raise InputError(f"{shown} does not exist or is not a file")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{shown}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(value, dict):
                raise InputError(f"{shown}:{number}: expected a JSON object, got {type(value).__name__}")
            yield number, value


def read_records(path: Path) -> list[Record]:
    return [Record.from_dict(obj, f"{path}:{number}") for number, obj in iter_jsonl(path)]


def write_records(path: Path, records: Iterable[Record]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(record.to_json() + "\n")
            count += 1
    return count
