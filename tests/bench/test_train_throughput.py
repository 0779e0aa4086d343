"""bench/train_throughput.py in its tiny CPU mode: every mode that runs without CUDA trains and is reported.

The figures themselves mean nothing on a CPU; what is checked is that the GPU run will find every piece
working: our trainer and TRL's SFTTrainer on the same tokens, the naive KD step, the loss-curve check and
the headline line.
"""

from __future__ import annotations

import math
import re

import pytest

from tests.bench.conftest import run_bench

pytestmark = pytest.mark.slow

OURS = "ours (padding-free, attention auto)"
SFT_MODES = [OURS, "TRL padding", "TRL padding-free", "TRL packing bfd"]  # those that need no CUDA
KD_MODES = [
    "naive full-vocabulary KD",
    "ours KD",
    "ours SFT, same student and tokens",
    "ours KD, gradient checkpointing",
    "ours on-policy KD, fraction 0.5",
]


@pytest.fixture(scope="module")
def output() -> list[str]:
    # Compiling on CPU takes a minute per shape; tests/train covers compiled training.
    sections = ["--sections", "sft,kd"]
    return run_bench("train_throughput.py", "--tiny", "--steps", "2", "--curve-steps", "4", *sections)


def row(lines: list[str], start: str) -> str:
    """The table row whose label columns are `start`; it must hold figures, not a failure."""
    found = [line for line in lines if line.startswith(start)]
    assert len(found) == 1, f"no single row {start!r} in:\n" + "\n".join(lines)
    assert "failed" not in found[0], found[0]
    return found[0][len(start) :]


def test_the_last_line_holds_the_five_headline_figures(output):
    figures = dict(pair.split("=") for pair in output[-1].split())
    assert list(figures) == [
        "sft_ratio_0.5B",
        "sft_ratio_1.5B",
        "kd_time_vs_sft",
        "kd_mem_vs_naive",
        "onpolicy_tokps_vs_kd",
    ]
    values = {key: float(value) for key, value in figures.items()}
    positive = ("sft_ratio_0.5B", "sft_ratio_1.5B", "kd_time_vs_sft", "onpolicy_tokps_vs_kd")
    assert all(values[key] > 0 for key in positive)
    assert math.isnan(values["kd_mem_vs_naive"])  # peak memory is a CUDA figure


def test_every_cpu_mode_trains_each_shape_and_ours_sees_the_same_tokens_as_trl(output):
    for shape in ("0.5B", "1.5B"):
        tokens = {}
        for mode in SFT_MODES:
            # tokens, tokens/s and MFU follow the label
            match = re.fullmatch(r"\s+(\d+)\s+(\d+)\s+[\d.]+% -", row(output, f"{shape:6} {mode:42}"))
            assert match and int(match[2]) > 0
            tokens[mode] = int(match[1])
        assert tokens[OURS] == tokens["TRL padding"] == tokens["TRL padding-free"]


def test_the_kd_section_times_the_naive_step_ours_our_sft_step_and_on_policy_kd(output):
    for mode in KD_MODES:
        seconds, tokens_per_second, memory = row(output, f"{mode:42}").split()
        assert float(seconds) > 0 and memory == "-"  # peak memory is a CUDA figure
        assert float(tokens_per_second) > 0


def test_our_loss_curve_matches_trls_on_the_same_batches(output):
    verdict = [line for line in output if line.startswith("step 1: ours")]
    assert verdict and "-> within noise" in verdict[0]
