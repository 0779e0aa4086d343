"""The teacher stage as recipes 2 and 4 run it, against the loopback demo teacher through the openai SDK:
raw text mixed into both prompt kinds with each record keeping its chunk id and kind (recipe 4), and the
kept records exported as sharegpt with LLaMA-Factory's dataset_info.json (recipe 2)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from components.common.logprobs_file import read_logprobs
from components.common.records import read_records
from components.teacher.chunking import chunk_text
from components.teacher.stage import run
from pipelines.demo_teacher import start_teacher_server, write_demo_dataset
from tests.conftest import approve_hosts
from tests.recipes.conftest import TEXT
from tests.teacher.conftest import teacher_config


@pytest.fixture
def server(monkeypatch):
    with start_teacher_server(api_key="sk-test") as running:
        approve_hosts(monkeypatch, running.base_url)
        yield running


@pytest.fixture(autouse=True)
def keyed(monkeypatch):
    monkeypatch.setenv("TEACHER_API_KEY", "sk-test")


def test_raw_text_records_keep_chunk_id_and_prompt_kind_of_both_kinds(tmp_path, server):
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "book.md").write_text(TEXT, encoding="utf-8")
    config = teacher_config(
        tmp_path,
        server.base_url,
        dataset=str(folder),
        dataset_format="text",
        text={"chunk_chars": 120, "kinds": {"qa": 0.5, "continue": 0.5}},
        min_prompt_chars=40,
        dedup=False,
        test_ratio=0.0,
    )

    result = run(config)

    records = read_records(tmp_path / "out" / "train.jsonl")
    kinds = Counter(record.extra["prompt_kind"] for record in records)
    assert set(kinds) == {"qa", "continue"}
    # Every chunk of at least min_prompt_chars is asked (the text repeats itself, and one prompt, a chunk
    # under one template, is asked once); a heading alone and the tails of long sentences never are.
    chunks = chunk_text(TEXT, 120)
    asked = {(chunks[record.extra["chunk"]].text, record.extra["prompt_kind"]) for record in records}
    assert sum(kinds.values()) == len(records) == result.metrics["records"] == len(asked)
    assert {text for text, _ in asked} == {chunk.text for chunk in chunks if len(chunk.text) >= 40}


def test_prompt_kinds_follow_the_data_not_the_folder_it_lies_in(tmp_path, server):
    """The same raw text under other roots (another machine, another temp folder) gets the same kinds."""
    kinds = []
    for number, root in enumerate(("a", "b/deeper/still", "c")):
        folder = tmp_path / root / "raw"
        (folder / "notes").mkdir(parents=True)
        (folder / "notes" / "book.md").write_text(TEXT, encoding="utf-8")
        config = teacher_config(
            tmp_path,
            server.base_url,
            dataset=str(folder),
            dataset_format="text",
            output_dir=str(tmp_path / f"out-{number}"),
            run_id=f"run-{number}",
            text={"chunk_chars": 120, "kinds": {"qa": 0.5, "continue": 0.5}},
            min_prompt_chars=40,
            dedup=False,
            test_ratio=0.0,
        )
        run(config)
        records = read_records(tmp_path / f"out-{number}" / "train.jsonl")
        kinds.append(sorted((record.extra["chunk"], record.extra["prompt_kind"]) for record in records))
    assert kinds[0] == kinds[1] == kinds[2]
    assert {kind for _, kind in kinds[0]} == {"qa", "continue"}


def test_kept_records_are_exported_as_sharegpt_for_llama_factory(tmp_path, server):
    write_demo_dataset(tmp_path / "prompts.jsonl", 12, seed=5)
    config = teacher_config(
        tmp_path, server.base_url, export=["sharegpt"], test_ratio=0.25, system_prompt="Be brief."
    )

    run(config)

    out = tmp_path / "out"
    info = json.loads((out / "sharegpt" / "dataset_info.json").read_text())
    assert info["distill_train"] == {
        "file_name": "train.json",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "system": "system"},
    }
    rows = json.loads((out / "sharegpt" / "train.json").read_text())
    records = read_records(out / "train.jsonl")
    assert len(rows) == len(records) == 9
    for row, record in zip(rows, records, strict=True):
        assert row["system"] == "Be brief."
        assert [turn["from"] for turn in row["conversations"]] == ["human", "gpt"]
        assert (
            row["conversations"][1]["value"]
            == f"<think>\n{record.reasoning.strip()}\n</think>\n\n{record.answer}"
        )
    assert len(json.loads((out / "sharegpt" / "test.json").read_text())) == 3


def test_the_teachers_logprobs_file_reaches_the_records_top_k_kd_reads(tmp_path, server):
    write_demo_dataset(tmp_path / "prompts.jsonl", 4, seed=2)
    config = teacher_config(
        tmp_path, server.base_url, provider={"logprobs": True, "top_logprobs": 3}, test_ratio=0.0
    )
    run(config)

    out = tmp_path / "out"
    records = read_records(out / "train.jsonl")
    assert not any(record.extra.get("logprobs") for record in records)
    positions = dict(read_logprobs(out))
    for record in records:
        entries = positions[record.id]
        assert "".join(entry["token"] for entry in entries) == record.answer
