"""Skipped lines are reported by file and line; a bad first line does not stop format detection; a JSONL
dataset streams through in memory that does not grow with its size."""

from __future__ import annotations

import json
import logging
import tracemalloc

import pytest

from components.common.config import from_dict
from components.common.errors import InputError
from components.teacher import Config
from components.teacher.readers import SHOWN_SKIPPED, ReadStats, read_prompts


def config_for(dataset, **overrides) -> Config:
    return from_dict(Config, {"dataset": str(dataset), "output_dir": "/tmp/unused", **overrides})


def test_each_skipped_line_is_logged_with_file_line_and_reason_up_to_a_count(tmp_path, caplog):
    lines = []
    for i in range(30):
        lines.append(json.dumps({"prompt": f"question {i}"}))
        lines.append("{not json" if i % 2 else json.dumps({"prompt": ""}))
    dataset = tmp_path / "mixed.jsonl"
    dataset.write_text("\n".join(lines) + "\n")
    stats = ReadStats()
    with caplog.at_level(logging.WARNING, logger="components.teacher.readers"):
        prompts = list(read_prompts(config_for(dataset, bad_lines="skip"), stats))

    assert [p.messages[0]["content"] for p in prompts] == [f"question {i}" for i in range(30)]
    assert stats.skipped_lines == 30
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:3] == [
        f"skipped {dataset}:2: field 'prompt' must be a non-empty string",
        f"skipped {dataset}:4: not valid JSON (Expecting property name enclosed in double quotes)",
        f"skipped {dataset}:6: field 'prompt' must be a non-empty string",
    ]
    assert len(messages) == SHOWN_SKIPPED + 1 == 21
    assert messages[SHOWN_SKIPPED - 1].startswith(f"skipped {dataset}:40: ")
    assert messages[-1] == "skipped 30 bad lines in all (bad_lines: skip); the first 20 are listed above"
    assert len(stats.errors) == SHOWN_SKIPPED


def test_auto_format_is_detected_from_the_first_good_line_when_bad_lines_are_skipped(tmp_path):
    dataset = tmp_path / "alpaca.jsonl"
    dataset.write_text(
        '{"question": "no known key"}\n'
        '{"instruction": ""}\n'
        '{"instruction": "Name a colour.", "output": "Red"}\n'
        '{"instruction": "Name a fruit.", "input": "", "output": "Apple"}\n'
    )
    stats = ReadStats()
    prompts = list(read_prompts(config_for(dataset, bad_lines="skip"), stats))
    assert [(p.messages[0]["content"], p.reference) for p in prompts] == [
        ("Name a colour.", "Red"),
        ("Name a fruit.", "Apple"),
    ]
    assert stats.errors == [
        f"{dataset}:1: cannot tell the dataset format from keys ['question']; expected prompt, messages, "
        "instruction (alpaca) or conversations (sharegpt), or set dataset_format",
        f"{dataset}:2: field 'instruction' must be a non-empty string",
    ]
    with pytest.raises(InputError, match=r"alpaca\.jsonl:1: cannot tell the dataset format"):
        list(read_prompts(config_for(dataset)))  # bad_lines: fail still stops at the first bad line


def test_a_jsonl_dataset_streams_in_memory_independent_of_its_size(tmp_path):
    # 8 MB of 1 KB prompts; reading all of them while keeping none must never hold more than a sliver of
    # the file (reading it whole, as text and then as lines and objects, holds several times its size).
    dataset = tmp_path / "big.jsonl"
    filler = "x" * 1000
    with dataset.open("w") as handle:
        for i in range(8000):
            handle.write(json.dumps({"prompt": f"{i} {filler}"}) + "\n")
    size = dataset.stat().st_size
    count = 0
    tracemalloc.start()
    try:
        for _ in read_prompts(config_for(dataset)):
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 8000
    assert peak < size / 20, f"peak {peak / 1e6:.1f} MB while reading a {size / 1e6:.1f} MB file"
