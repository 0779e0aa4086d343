"""export: [dpo]: the answers the judge rejected against their gold answer become preference pairs, the
gold answer chosen, the teacher's rejected (seed 001 keeps the rejected answers for a later RL stage)."""

from __future__ import annotations

import json

from components.teacher.stage import run
from pipelines.demo_teacher import start_teacher_server
from tests.teacher.conftest import teacher_config

ROWS = [
    {"instruction": "Reverse the letters of: abc", "output": "cba"},
    {"instruction": "Reverse the letters of: dog", "output": "dog"},  # the teacher's "god" is rejected
    {"instruction": "Reverse the letters of: moon", "output": "moon"},  # "noom" is rejected
]


def test_rejected_answers_become_dpo_pairs_with_the_gold_answer_chosen(tmp_path):
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    with start_teacher_server() as server:
        run(
            teacher_config(
                tmp_path,
                server.base_url,
                dataset=str(tmp_path / "data.jsonl"),
                test_ratio=0.0,
                judge={"enabled": True},
                export=["dpo"],
            )
        )

    pairs = [json.loads(line) for line in (tmp_path / "out" / "dpo" / "train.jsonl").read_text().splitlines()]
    assert sorted(
        (p["prompt"][-1]["content"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs
    ) == [
        ("Reverse the letters of: dog", "dog", "god"),
        ("Reverse the letters of: moon", "moon", "noom"),
    ]
    assert all(p["chosen"][0]["role"] == p["rejected"][0]["role"] == "assistant" for p in pairs)
