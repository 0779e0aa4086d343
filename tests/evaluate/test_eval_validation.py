"""eval `validation` (seed 004's `--data_path data/val.json`): the stage scores a held-out validation file
given by the run, fetched from the bucket, instead of the teacher data's test split."""

from __future__ import annotations

import json

import boto3
import yaml

from components.common.config import to_dict
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


def test_a_validation_row_without_a_gold_answer_is_refused_naming_the_row(
    tiny_model_dir, reversal_data_dir, tmp_path
):
    (tmp_path / "val.jsonl").write_text(json.dumps({"instruction": "Reverse the letters of: cloud"}) + "\n")
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
    assert status != 0 and "row 1" in last and "output" in last, stderr
