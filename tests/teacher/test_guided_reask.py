"""judge.hint_rejected (seed 001's guided chain of thought): an answer the judge rejects is asked once
more with the gold answer as a hint; the new answer is judged again and, accepted, kept under the original
prompt, counted in the summary. Through the stage's command against the demo teacher on loopback, which
reverses words (so a palindrome-free word whose gold answer is itself is rejected) and follows a hint."""

from __future__ import annotations

import json

from pipelines.demo_teacher import start_teacher_server
from tests.teacher.conftest import run_teacher_cli, teacher_settings

ROWS = [
    {"instruction": "Reverse the letters of: abc", "output": "cba"},
    {"instruction": "Reverse the letters of: dog", "output": "dog"},  # the teacher's "god" is rejected
]


def run_judged(tmp_path, **overrides) -> dict[str, int]:
    """The stage's command over ROWS with the judge on; how often the demo teacher got each prompt."""
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    with start_teacher_server() as server:
        dataset = str(tmp_path / "data.jsonl")
        settings = teacher_settings(tmp_path, server.base_url, dataset=dataset, test_ratio=0.0, **overrides)
        done = run_teacher_cli(tmp_path, settings)
    assert done.returncode == 0, done.stderr
    return dict(server.requests_by_prompt)


def test_a_rejected_answer_is_asked_again_with_the_gold_answer_as_a_hint_and_kept_when_accepted(tmp_path):
    asked = run_judged(tmp_path, judge={"enabled": True, "hint_rejected": True})

    hinted = [prompt for prompt in asked if "correct final answer: dog" in prompt]
    assert len(hinted) == 1 and asked[hinted[0]] == 1
    assert hinted[0].startswith("Reverse the letters of: dog\n")
    assert not any("correct final answer: cba" in prompt for prompt in asked)
    records = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    kept = {r["messages"][-2]["content"]: r["messages"][-1]["content"] for r in records}
    assert kept == {"Reverse the letters of: abc": "cba", "Reverse the letters of: dog": "dog"}
    metrics = json.loads((tmp_path / "out" / "summary.json").read_text())["metrics"]
    assert (metrics["judge_hinted"], metrics["judge_hint_accepted"], metrics["rejected"]) == (1, 1, 0)


def test_hinted_answers_dpo_keeps_them_out_of_training_as_pairs_over_the_unhinted_answer(tmp_path):
    """As seed 001: the guided chain of thought goes to the later preference stage, not to SFT."""
    run_judged(
        tmp_path, judge={"enabled": True, "hint_rejected": True, "hinted_answers": "dpo"}, export=["dpo"]
    )

    out = tmp_path / "out"
    trained = [json.loads(line)["messages"][-2]["content"] for line in (out / "train.jsonl").open()]
    assert trained == ["Reverse the letters of: abc"]
    pairs = [json.loads(line) for line in (out / "dpo" / "train.jsonl").open()]
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [("dog", "god")]
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert (metrics["judge_hinted"], metrics["judge_hint_accepted"], metrics["hinted"]) == (1, 1, 1)


def test_hint_rejected_without_the_judge_is_refused_in_one_line(tmp_path):
    settings = teacher_settings(tmp_path, "http://127.0.0.1:9/v1", judge={"hint_rejected": True})
    done = run_teacher_cli(tmp_path, settings)
    assert done.returncode != 0
    assert "judge.hint_rejected" in done.stderr.strip().splitlines()[-1]
