"""export: [alpaca] writes the kept records as the published raw-text recipe (seed 003) trains on them:
{"instruction", "input": "", "output", "chunk_id", "category"} with its categories 问答 and 文章生成."""

from __future__ import annotations

import json

from components.common.records import read_records
from components.teacher.stage import run
from tests.recipes.conftest import TEXT
from tests.teacher.conftest import teacher_config


def test_raw_text_records_export_as_the_seeds_alpaca_rows(tmp_path, keyed_server):
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "data.txt").write_text(TEXT, encoding="utf-8")
    config = teacher_config(
        tmp_path,
        keyed_server.base_url,
        dataset=str(folder),
        dataset_format="text",
        text={"chunk_chars": 120, "kinds": {"qa_zh": 0.5, "continue_zh": 0.5}},
        dedup=False,
        test_ratio=0.0,
        export=["alpaca"],
    )

    run(config)

    records = read_records(tmp_path / "out" / "train.jsonl")
    lines = (tmp_path / "out" / "alpaca" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == len(records) > 0
    assert {row["category"] for row in rows} == {"问答", "文章生成"}
    openings = {
        "问答": "根据以下文本内容，提出一个问题并回答：\n\n",
        "文章生成": "请续写以下文本，保持相同的写作风格：\n\n",
    }
    for row, record in zip(rows, records, strict=True):
        assert set(row) == {"instruction", "input", "output", "chunk_id", "category"}
        assert row["instruction"].startswith(openings[row["category"]])
        assert (row["input"], row["output"], row["chunk_id"]) == ("", record.answer, record.extra["chunk"])
