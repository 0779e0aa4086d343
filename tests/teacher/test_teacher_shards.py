"""Scale out: shards answer disjoint prompts into one S3 store, finalize merges, dedups and splits."""

from __future__ import annotations

from components.common.config import from_dict
from components.common.records import read_records
from components.teacher import Config
from components.teacher.plan import plan
from components.teacher.stage import finalize, run_shard
from pipelines.demo_teacher import start_teacher_server, write_demo_dataset


def test_three_shards_on_s3_then_finalize_give_every_prompt_once(tmp_path, s3_endpoint):
    write_demo_dataset(tmp_path / "prompts.jsonl", 30, seed=2)
    with start_teacher_server() as server:
        config = from_dict(
            Config,
            {
                "dataset": str(tmp_path / "prompts.jsonl"),
                "output_dir": str(tmp_path / "out"),
                "store_uri": "s3://distill/sharded",
                "run_id": "run-1",
                "progress_bar": False,
                "test_ratio": 0.2,
                "provider": {"name": "demo", "base_url": server.base_url, "rpm": 60000},
            },
        )
        shards = [run_shard(config, index, 3) for index in range(3)]
        assert [s.metrics["shard_prompts"] for s in shards] == [10, 10, 10]
        assert sum(server.requests_by_prompt.values()) == 30 and set(server.requests_by_prompt.values()) == {
            1
        }
        # A shard retried by KFP finds its answers in the store and asks nothing.
        assert run_shard(config, 1, 3).metrics["requests"] == 0
        result = finalize(config)
    train = read_records(tmp_path / "out" / "train.jsonl")
    test = read_records(tmp_path / "out" / "test.jsonl")
    assert (len(train), len(test)) == (24, 6) and result.metrics["records"] == 30
    assert {r.messages[0]["content"] for r in train + test} == set(server.requests_by_prompt)


def test_every_shard_plans_the_same_prompts_in_the_same_order(tmp_path):
    write_demo_dataset(tmp_path / "prompts.jsonl", 10)
    config = from_dict(
        Config, {"dataset": str(tmp_path / "prompts.jsonl"), "output_dir": str(tmp_path / "o")}
    )
    settings = {"provider": "demo", "model": "m", "params": {}}
    assert plan(config, settings).keys == plan(config, settings).keys
