"""eval `validation` (seed 004's `--data_path data/val.json`): the stage scores a held-out validation file
given by the run, fetched from the bucket, instead of the teacher data's test split."""

from __future__ import annotations

import json

import boto3
import pytest
import yaml

from components.common.config import to_dict
from components.common.records import record_id
from tests.conftest import run_command
from tests.evaluate.conftest import eval_config

ROWS = [  # the seed's rows: a prompt (alpaca instruction) and its gold answer
    {"instruction": "Reverse the letters of: cloud", "output": "duolc"},
    {"instruction": "Reverse the letters of: stone", "output": "enots"},
    {"instruction": "Reverse the letters of: river", "output": "revir"},
]


def test_eval_scores_the_runs_validation_file_from_the_bucket_not_the_test_split(
    tiny_model_dir, reversal_data_dir, s3_endpoint, tmp_path
):
    body = json.dumps(ROWS, ensure_ascii=False).encode()
    boto3.client("s3").put_object(Bucket="distill", Key="datasets/val.json", Body=body)
    out = tmp_path / "eval"
    config = eval_config(
        tiny_model_dir,
        tiny_model_dir,
        reversal_data_dir,
        out,
        validation="s3://distill/datasets/val.json",
    )
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(to_dict(config)))
    status, _, stderr = run_command(
        "components.evaluate", "--config", str(tmp_path / "eval.yaml"), limit_s=180
    )
    assert status == 0, stderr

    saved = json.loads((out / "eval.json").read_text())
    assert saved["metrics"]["num_samples"] == 3
    assert sorted(sample["teacher"] for sample in saved["samples"]) == ["duolc", "enots", "revir"]
    assert "distilled_ref_rouge_l" in saved["metrics"]


def scored_samples(validation, tiny_model, test_data, tmp_path) -> list[dict]:
    """The samples eval.json holds after the stage CLI scores the tiny student on `validation`."""
    out = tmp_path / "eval"
    config = eval_config(tiny_model, tiny_model, test_data, out, validation=str(validation))
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(to_dict(config)))
    status, _, stderr = run_command(
        "components.evaluate", "--config", str(tmp_path / "eval.yaml"), limit_s=180
    )
    assert status == 0, stderr
    return json.loads((out / "eval.json").read_text())["samples"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# The teacher setting of a validation record: its gold answer comes from the dataset.
GOLD = {"provider": "dataset", "model": "validation"}


def test_an_alpaca_rows_system_text_is_put_to_the_students_as_in_training(
    tiny_model_dir, reversal_data_dir, tmp_path
):
    system = "Answer with the reversed word alone."
    row = {"system": system, "instruction": "Reverse the letters of: cloud", "output": "duolc"}
    samples = scored_samples(
        write_jsonl(tmp_path / "val.jsonl", [row]), tiny_model_dir, reversal_data_dir, tmp_path
    )
    # A record's id is the hash of the prompt messages the students were given.
    asked = [{"role": "system", "content": system}, {"role": "user", "content": row["instruction"]}]
    assert [sample["id"] for sample in samples] == [record_id(asked, GOLD)]
    assert samples[0]["teacher"] == "duolc"


def test_a_sharegpt_validation_file_is_scored_against_its_gpt_turns(
    tiny_model_dir, reversal_data_dir, tmp_path
):
    rows = [
        {
            "conversations": [
                {"from": "human", "value": f"Reverse the letters of: {word}"},
                {"from": "gpt", "value": word[::-1]},
            ]
        }
        for word in ("cloud", "stone")
    ]
    samples = scored_samples(
        write_jsonl(tmp_path / "val.jsonl", rows), tiny_model_dir, reversal_data_dir, tmp_path
    )
    assert [(s["prompt"], s["teacher"], s["reference"]) for s in samples] == [
        ("Reverse the letters of: cloud", "duolc", "duolc"),
        ("Reverse the letters of: stone", "enots", "enots"),
    ]


def test_an_alpaca_input_of_whitespace_alone_is_left_out_of_the_prompt_as_in_training(
    tiny_model_dir, reversal_data_dir, tmp_path
):
    row = {"instruction": "Reverse the letters of: cloud", "input": " \n ", "output": "duolc"}
    samples = scored_samples(
        write_jsonl(tmp_path / "val.jsonl", [row]), tiny_model_dir, reversal_data_dir, tmp_path
    )
    assert [sample["prompt"] for sample in samples] == ["Reverse the letters of: cloud"]


@pytest.mark.parametrize(
    ("row", "named"),
    [
        ({"instruction": "Reverse the letters of: cloud"}, "'output'"),
        ({"conversations": [{"from": "human", "value": "Reverse the letters of: cloud"}]}, "'gpt' turn"),
    ],
    ids=["alpaca", "sharegpt"],
)
def test_a_validation_row_without_a_gold_answer_is_refused_naming_the_row(
    tiny_model_dir, reversal_data_dir, tmp_path, row, named
):
    write_jsonl(tmp_path / "val.jsonl", [row])
    config = eval_config(
        tiny_model_dir,
        tiny_model_dir,
        reversal_data_dir,
        tmp_path / "eval",
        validation=str(tmp_path / "val.jsonl"),
    )
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(to_dict(config)))
    status, _, stderr = run_command(
        "components.evaluate", "--config", str(tmp_path / "eval.yaml"), limit_s=120
    )
    last = stderr.strip().splitlines()[-1]
    assert status != 0 and "row 1" in last and named in last, stderr
