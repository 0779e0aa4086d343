"""Dataset readers: every supported source format becomes a list of `Prompt`s.

Formats:
    prompts, alpaca, sharegpt, messages
               one JSON object per line, or a .json file holding a list of them, or parquet rows; each row
               becomes messages and a reference as components/common/dataset_rows.py reads it (the eval
               stage reads its validation file with the same readers)
    text       UTF-8 text (.txt/.md or any file of a folder), chunked on sentence boundaries and turned
               into prompts by a template (templates/qa.j2, templates/continue.j2 or your own file), or
               by several templates mixed at the shares of `text.kinds`
"auto" picks text for .txt/.md files and otherwise looks at the keys of the first good record of a file.
With `fields` set, every row is read through that mapping instead (question, answer, system), and a
Jinja `prompt_template` sees all the row's fields.

`dataset` is a file, a folder (every file in it, sorted), s3://bucket/key (a file or a prefix) or a
Hugging Face dataset hf://datasets/org/name[@revision] (hub_datasets.py). Rows of .parquet files are read
a record batch at a time.
JSONL is read a line at a time, so a dataset of any size streams through in constant memory (a .json list
and a text file are read whole). Every error names the file and line; with bad_lines "skip" a malformed
line is left out, and the first SHOWN_SKIPPED of them are logged as "file:line: reason", then a count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.common.dataset_rows import FORMATS_SHOWN, ROW_READERS, row_format
from components.common.errors import ConfigError, InputError
from components.common.secrets import refuse_secret_path
from components.common.store import open_store, path_under
from components.teacher.chunking import chunk_text
from components.teacher.config import HF_DATASETS, Config, FieldMap
from components.teacher.hub_datasets import hub_rows
from components.teacher.templates import render_file_template, render_prompt_template, template_variables

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md", ".text")
SHOWN_SKIPPED = 20


@dataclass
class Prompt:
    """One request to the teacher: the prompt messages, the source's own answer, where it came from."""

    messages: list[dict[str, str]]
    reference: str | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # What min/max_prompt_chars measure instead of the user turn (a raw-text chunk, without its template).
    source_chars: int = 0
    # The dataset row read through `fields`: what a Jinja prompt_template sees besides `prompt`.
    row: dict[str, Any] | None = None


@dataclass
class ReadStats:
    files: int = 0
    skipped_lines: int = 0
    errors: list[str] = field(default_factory=list)  # "file:line: reason" of the first SHOWN_SKIPPED
    quiet: bool = False  # a second reading of the dataset, whose skipped lines were logged by the first

    def skip(self, problem: InputError) -> None:
        """Leave a bad line out (bad_lines: skip), saying which and why for the first SHOWN_SKIPPED."""
        self.skipped_lines += 1
        if len(self.errors) < SHOWN_SKIPPED and not self.quiet:
            self.errors.append(str(problem))
            log.warning("skipped %s", problem)

    def log_summary(self) -> None:
        if self.quiet:
            return
        if self.skipped_lines > len(self.errors):
            log.warning(
                "skipped %d bad lines in all (bad_lines: skip); the first %d are listed above",
                self.skipped_lines,
                len(self.errors),
            )
        elif self.skipped_lines:
            log.warning("skipped %d bad lines (bad_lines: skip), listed above", self.skipped_lines)


def read_prompts(config: Config, stats: ReadStats | None = None) -> Iterator[Prompt]:
    """Every prompt of `config.dataset`, one at a time, with the system prompt and prompt template applied;
    with `config.mix`, each location's seeded share of its prompts instead."""
    stats = stats if stats is not None else ReadStats()
    if config.mix:
        for location, share in config.mix.items():
            yield from mixed_share(dataclasses.replace(config, dataset=location, mix={}), share, stats)
        return
    if config.dataset.startswith(HF_DATASETS):
        rows = hub_rows(config.dataset, config.dataset_split, config.dataset_config)
        for prompt in _read_objects(rows, config.dataset_format, config, stats):
            _apply_config(prompt, config)
            yield prompt
        stats.log_summary()
        return
    with tempfile.TemporaryDirectory(prefix="teacher-dataset-") as scratch:
        files = _local_files(config.dataset, Path(scratch))
        stats.files = len(files)
        for path, name, relative in files:
            for prompt in _read_file(path, name, relative, config, stats):
                _apply_config(prompt, config)
                yield prompt
    stats.log_summary()


def mixed_share(config: Config, share: float, stats: ReadStats) -> Iterator[Prompt]:
    """int(rows x share) of `config.dataset`'s prompts, drawn with a seed of (seed, location), in order."""
    prompts = list(read_prompts(config, stats))
    rng = random.Random(f"{config.seed}:{config.dataset}")
    chosen = sorted(rng.sample(range(len(prompts)), int(len(prompts) * share)))
    log.info("mix: %d of the %d prompts of %s (share %s)", len(chosen), len(prompts), config.dataset, share)
    return (prompts[index] for index in chosen)


def _local_files(dataset: str, scratch: Path) -> list[tuple[Path, str, str]]:
    """(local file, name for messages, path relative to the dataset's root) triples; s3:// objects are
    downloaded into `scratch` first. The relative path keys seeded choices, so the same data gives the
    same prompts wherever it lies."""
    if dataset.startswith("s3://"):
        bucket, _, key = dataset[len("s3://") :].rstrip("/").partition("/")
        store = open_store(f"s3://{bucket}")
        keys = store.list(key)
        if not keys:
            raise InputError(f"dataset {dataset}: no object at or under this key; check the bucket and path")
        for item in keys:
            store.download_file(item, path_under(scratch, item))
        root = key.rsplit("/", 1)[0] if keys == [key] else key
        return [
            (path_under(scratch, item), f"s3://{bucket}/{item}", item[len(root) :].lstrip("/"))
            for item in keys
        ]
    path = Path(dataset).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise InputError(f"dataset {dataset}: the folder holds no files")
        for file in files:  # a symlink in the folder may point at /proc/self/environ
            refuse_secret_path(file, "dataset")
        return [(p, str(p), p.relative_to(path).as_posix()) for p in files]
    if not path.is_file():
        raise InputError(f"dataset {dataset} does not exist; give a JSONL/JSON/text file, a folder or s3://")
    return [(path, str(path), path.name)]


def _read_file(path: Path, name: str, relative: str, config: Config, stats: ReadStats) -> Iterator[Prompt]:
    fmt = config.dataset_format
    if fmt == "text" or (fmt == "auto" and path.suffix.lower() in TEXT_SUFFIXES):
        yield from _read_text(path, name, relative, config)
        return
    yield from _read_objects(_objects(path, name, config.bad_lines, stats), fmt, config, stats)


def _read_objects(
    objects: Iterator[tuple[str, dict[str, Any]]], fmt: str, config: Config, stats: ReadStats
) -> Iterator[Prompt]:
    for where, obj in objects:
        try:
            if config.fields.enabled and not holds_conversation(obj, config.fields):
                line_format, prompt = fmt, read_fields_row(obj, where, config.fields)
            else:
                line_format = detect_format(obj, where) if fmt == "auto" else fmt
                row = ROW_READERS[line_format](obj, where)
                prompt = Prompt(row.messages, row.reference, where)
        except InputError as error:
            if config.bad_lines == "fail":
                raise
            stats.skip(error)
            continue
        fmt = line_format  # the first good line sets the format of the rest of the file
        yield prompt


def holds_conversation(obj: dict[str, Any], fields: FieldMap) -> bool:
    """A row that is already a conversation (sharegpt `conversations` or `messages`) and holds none of the
    fields the mapping names is read as that conversation: a dataset that stored the built prompts (the
    published comment data) needs no `fields` or row template taken out of the run's config."""
    named = {path.split(".")[0] for path in (fields.question, fields.answer, fields.system) if path}
    return ("conversations" in obj or "messages" in obj) and not named & set(obj)


def detect_format(obj: dict[str, Any], where: str) -> str:
    fmt = row_format(obj)
    if fmt is None:
        raise InputError(
            f"{where}: cannot tell the dataset format from keys {sorted(obj)}; expected {FORMATS_SHOWN}, "
            "or set dataset_format"
        )
    return fmt


def _objects(path: Path, name: str, bad_lines: str, stats: ReadStats) -> Iterator[tuple[str, dict[str, Any]]]:
    """(file:line, object) pairs of a JSONL file, (file:item N, object) of a .json list, (file:row N,
    object) of a parquet file."""
    if path.suffix.lower() == ".parquet":
        entries = _parquet_rows(path, name)
    elif _is_json_list(path):
        entries = _json_list(path, name)
    else:
        entries = _jsonl(path, name)
    for where, value in entries:
        problem = value if isinstance(value, InputError) else None
        if problem is None and not isinstance(value, dict):
            problem = InputError(f"{where}: expected a JSON object, got {type(value).__name__}")
        if problem is None:
            yield where, value
        elif bad_lines == "fail":
            raise problem
        else:
            stats.skip(problem)


def _is_json_list(path: Path) -> bool:
    if path.suffix.lower() != ".json":
        return False
    with path.open("rb") as handle:
        return handle.read(4096).lstrip().startswith(b"[")


def _json_list(path: Path, name: str) -> Iterator[tuple[str, Any]]:
    """The items of a .json file holding one list: read whole, as JSON cannot be parsed in pieces."""
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise InputError(f"{name}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{name}:{error.lineno}: not valid JSON ({error.msg})") from None
    for i, item in enumerate(items, start=1):
        yield f"{name}:item {i}", item


def _parquet_rows(path: Path, name: str) -> Iterator[tuple[str, Any]]:
    """The rows of a parquet file as mappings, a record batch at a time (memory bounded by the batch)."""
    import pyarrow
    import pyarrow.parquet as parquet

    try:
        table = parquet.ParquetFile(path)
    except pyarrow.ArrowInvalid as error:
        raise InputError(f"{name}: not a parquet file ({error})") from None
    number = 0
    for batch in table.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            number += 1
            yield f"{name}:row {number}", row


def _jsonl(path: Path, name: str) -> Iterator[tuple[str, Any | InputError]]:
    """(file:line, parsed value or the InputError saying why it is not one), a line at a time."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{name}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield where, InputError(f"{where}: not UTF-8 text ({error.reason} at byte {error.start})")
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as error:
                yield where, InputError(f"{where}: not valid JSON ({error.msg})")


def _field(obj: dict[str, Any], path: str, where: str, required: bool) -> str | None:
    """The value at a dotted path (`solutions.0`) as text; lists and mappings become JSON."""
    value: Any = obj
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            value = None
            break
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InputError(f"{where}: field {path!r} is missing or empty (fields mapping)")
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def read_fields_row(obj: dict[str, Any], where: str, fields: FieldMap) -> Prompt:
    """A row of any shape, through the `fields` mapping; the row itself stays for the prompt template."""
    question = _field(obj, fields.question, where, required=True) if fields.question else None
    messages = [{"role": "user", "content": question or ""}]
    system = _field(obj, fields.system, where, required=False) if fields.system else None
    if system:
        messages.insert(0, {"role": "system", "content": system})
    reference = _field(obj, fields.answer, where, required=False) if fields.answer else None
    return Prompt(messages, reference, where, row=obj)


def _read_text(path: Path, name: str, relative: str, config: Config) -> Iterator[Prompt]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{name}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    for number, chunk in enumerate(chunk_text(text, config.text.chunk_chars, config.text.overlap_chars)):
        kind = prompt_kind(config.text.kinds, config.seed, f"{relative}:{number}") or config.text.template
        user = render_file_template(kind, chunk=chunk.text)
        extra = {"chunk": number, "prompt_kind": kind} if config.text.kinds else {"chunk": number}
        where = f"{name}:{chunk.line}"
        yield Prompt([{"role": "user", "content": user}], None, where, extra, source_chars=len(chunk.text))


def prompt_kind(kinds: dict[str, float], seed: int, chunk: str) -> str | None:
    """The template of one chunk when several are mixed: a point in [0, 1) from a hash of (seed, chunk)
    falls into one template's share of the cumulative shares, so the mix holds on average and a rerun
    gives each chunk the same template. `chunk` names the chunk by content, never by where the data lies:
    its file's path relative to the dataset root and its index there."""
    if not kinds:
        return None
    digest = hashlib.sha256(f"{seed}:{chunk}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * sum(kinds.values())
    for kind, share in kinds.items():
        point -= share
        if point < 0:
            return kind
    return next(kind for kind, share in reversed(kinds.items()) if share > 0)


def _apply_config(prompt: Prompt, config: Config) -> None:
    """The config's system prompt replaces the source's; the prompt template wraps the last user turn."""
    if config.system_prompt:
        prompt.messages = [m for m in prompt.messages if m["role"] != "system"]
        prompt.messages.insert(0, {"role": "system", "content": config.system_prompt})
    if config.prompt_template:
        last = prompt.messages[-1]
        if prompt.row is not None:
            question = last["content"] if config.fields.question else None
            try:
                last["content"] = render_prompt_template(
                    config.prompt_template, question, _row_text(prompt.row)
                )
            except ConfigError as error:  # a field the template reads is missing from this row
                raise InputError(f"{prompt.source}: {error}") from None
        elif not (config.fields.enabled and template_variables(config.prompt_template) - {"prompt"}):
            last["content"] = render_prompt_template(config.prompt_template, last["content"])
        # Otherwise a conversation row (holds_conversation) under a template built from row fields: its
        # user turn is that built prompt already.


def _row_text(row: dict[str, Any]) -> dict[str, Any]:
    """The row's fields as the template sees them: text as is, None as empty text."""
    return {key: "" if value is None else value for key, value in row.items()}
