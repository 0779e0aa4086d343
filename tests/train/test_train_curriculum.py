"""Multi-phase curriculum: phases run in order with their own mix, rate and weights; a slice can be run."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from components.common.errors import ConfigError
from components.common.records import write_records
from components.train.curriculum import mix_examples
from components.train.data import Example
from components.train.stage import run
from tests.train.conftest import reversal_records


def scalars(folder, tag):
    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.fixture
def domain_data(tmp_path):
    folder = tmp_path / "domain"
    write_records(folder / "train.jsonl", reversal_records(40, seed=9))
    return folder


def curriculum_config(make_config, domain_data, **overrides):
    return make_config(
        datasets={"domain": str(domain_data)},
        logging_steps=1,
        curriculum=[
            {"name": "general", "mix": {"main": 1.0}, "max_steps": 3, "learning_rate": 1e-3},
            {"name": "domain", "mix": {"main": 0.3, "domain": 0.7}, "max_steps": 2, "learning_rate": 5e-4},
        ],
        lr_scheduler="constant",
        warmup_ratio=0.0,
        **overrides,
    )


def test_two_phases_run_in_order_with_their_own_learning_rates(make_config, domain_data):
    config = curriculum_config(make_config, domain_data)
    result = run(config)
    assert result.steps == 5
    summary = json.loads(open(f"{config.output_dir}/train_summary.json").read())
    assert summary["phases"] == ["general", "domain"]
    phase = scalars(config.tensorboard_dir, "train/phase")
    assert [value for _, value in phase] == [0, 0, 0, 1, 1]
    lr = dict(scalars(config.tensorboard_dir, "train/lr"))
    assert lr[3] == pytest.approx(1e-3) and lr[4] == pytest.approx(5e-4)


def test_start_phase_counts_phases_from_1_and_runs_only_the_later_ones(make_config, domain_data):
    config = curriculum_config(make_config, domain_data, start_phase=2)
    result = run(config)
    assert result.steps == 2
    assert [value for _, value in scalars(config.tensorboard_dir, "train/phase")] == [1, 1]


def test_a_phase_mix_draws_each_source_in_proportion():
    sources = {
        "main": [Example([1], [1], f"m{i}", source="main") for i in range(50)],
        "domain": [Example([1], [1], f"d{i}", source="domain") for i in range(20)],
    }
    drawn = mix_examples(sources, {"main": 0.3, "domain": 0.7}, samples=100, seed=0)
    assert Counter(e.source for e in drawn) == {"main": 30, "domain": 70}
    # A source smaller than its share is cycled through whole before any record repeats.
    domain_ids = [e.record_id for e in drawn if e.source == "domain"]
    assert len(set(domain_ids[:20])) == 20
    assert drawn == mix_examples(sources, {"main": 0.3, "domain": 0.7}, samples=100, seed=0)


def test_a_mix_naming_an_unknown_dataset_is_refused(make_config):
    with pytest.raises(ConfigError, match="'domain', which is not 'main' or a key of datasets"):
        make_config(curriculum=[{"name": "x", "mix": {"domain": 1.0}}])


def test_a_run_stopped_at_a_phase_boundary_resumes_into_the_next_phase(make_config, domain_data, tmp_path):
    store = str(tmp_path / "store")
    # save_steps 3: the only checkpoint is the last step of the first phase (3 of 3 + 2 steps).
    whole = curriculum_config(make_config, domain_data, store_uri=store, save_steps=3)
    run(whole)
    reference = load_file(f"{whole.output_dir}/adapter_model.safetensors")
    # A retry after the pod died in the second phase starts there again, from the first phase's weights.
    again = curriculum_config(
        make_config,
        domain_data,
        store_uri=store,
        save_steps=3,
        output_dir=str(tmp_path / "again"),
        tensorboard_dir=str(tmp_path / "tb-again"),
    )
    result = run(again)
    assert result.resumed_from == 3 and result.steps == 5
    resumed = load_file(f"{again.output_dir}/adapter_model.safetensors")
    for name in reference:
        torch.testing.assert_close(resumed[name], reference[name], atol=1e-5, rtol=1e-4)


def test_each_phase_takes_its_own_batch_size_and_epochs(make_config, domain_data):
    """Seed 002's per-phase tuning: a phase's batch_size and num_epochs set its length, 16 records a
    phase: 2 epochs of batches of 8 (4 steps), then 1 epoch of batches of 4 (4 steps)."""
    config = make_config(
        datasets={"domain": str(domain_data)},
        logging_steps=1,
        max_steps=-1,
        curriculum=[
            {"name": "general", "mix": {"main": 1.0}, "samples": 16, "num_epochs": 2, "batch_size": 8},
            {"name": "domain", "mix": {"domain": 1.0}, "samples": 16, "num_epochs": 1, "batch_size": 4},
        ],
    )
    result = run(config)
    assert result.steps == 8
    assert [value for _, value in scalars(config.tensorboard_dir, "train/phase")] == [0] * 4 + [1] * 4
