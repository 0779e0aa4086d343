"""Loss curves come from the train stage's TensorBoard events, in a folder or under an s3:// prefix."""

from __future__ import annotations

import pytest

from components.common.errors import InputError
from components.common.store import open_store
from components.evaluate.curves import loss_svg, nice_ticks, read_loss_curves
from tests.evaluate.conftest import write_events


def test_loss_scalars_of_every_run_folder_are_read_with_steps(tmp_path):
    write_events(tmp_path, "train/loss", [3.0, 2.0, 1.5])
    write_events(tmp_path / "rank1", "kd/kl_loss", [0.9, 0.4])
    curves = read_loss_curves(str(tmp_path))

    assert curves["train/loss"] == [(0, 3.0), (5, 2.0), (10, 1.5)]
    assert [v for _, v in curves["rank1/kd/kl_loss"]] == pytest.approx([0.9, 0.4])
    assert not any("learning_rate" in tag for tag in curves)


def test_events_under_an_s3_prefix_are_read_through_the_store(tmp_path, s3_endpoint):
    write_events(tmp_path / "tb", "train/loss", [2.0, 1.0])
    open_store("s3://distill/runs/r1/train").upload_dir(tmp_path / "tb", "tensorboard")
    curves = read_loss_curves("s3://distill/runs/r1/train/tensorboard")
    assert curves == {"train/loss": [(0, 2.0), (5, 1.0)]}


def test_missing_folder_names_the_field(tmp_path):
    with pytest.raises(InputError, match="tensorboard_dir: .* is not a folder"):
        read_loss_curves(str(tmp_path / "nowhere"))


def test_svg_draws_one_polyline_per_curve_scaled_into_the_plot():
    svg = loss_svg({"a": [(0, 4.0), (100, 1.0)], "b": [(0, 2.0), (100, 2.0)]}, width=400, height=200)
    assert svg.startswith("<svg") and svg.count("<polyline") == 2
    # x: margins 56 left, 16 right -> step 0 at 56, step 100 at 384; y: 16 top, 40 bottom -> 4.0 at 16, 1.0 at 160
    assert 'points="56.0,16.0 384.0,160.0"' in svg
    assert loss_svg({}) == ""


def test_axis_ticks_are_round_numbers():
    assert nice_ticks(10, 800) == [200, 400, 600, 800]
    assert nice_ticks(0.995, 4.42) == [1, 2, 3, 4]
    assert nice_ticks(0.11, 0.42) == [0.2, 0.3, 0.4]  # step 0.1: the first of 1, 2, 5 × 10^k ≥ 0.31/4
    assert nice_ticks(3.0, 3.0) == [3.0]
