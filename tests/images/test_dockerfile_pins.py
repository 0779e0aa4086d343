"""What the Dockerfiles install is pinned and shared: every pip call is held to docker/constraints.txt
(which pins the tools the images add: wheel, modelscope, flash-attn), flash-attn is compiled rather than
fetched prebuilt, every URL names a real host, and the steps up to torch are the same text in every stage
image so that a layer cache builds them once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipelines.images import STAGES

DOCKER = Path(__file__).resolve().parents[2] / "docker"
KNOWN_HOSTS = {"download.pytorch.org", "github.com"}


def dockerfile(stage: str) -> str:
    return (DOCKER / f"{stage}.Dockerfile").read_text()


def shell_commands(stage: str) -> list[str]:
    """The RUN commands, continuation lines joined, split at `&&`."""
    joined = re.sub(r"\\\n", " ", dockerfile(stage))
    runs = [line.removeprefix("RUN ") for line in joined.splitlines() if line.startswith("RUN ")]
    return [part.strip() for run in runs for part in run.split("&&")]


@pytest.mark.parametrize("stage", STAGES)
def test_every_pip_install_is_held_to_the_constraints(stage):
    for command in shell_commands(stage):
        if re.search(r"\bpip (install|wheel)\b", command) and "/dist/" not in command:
            assert "-c /build/constraints.txt" in command, f"{stage}: unpinned: {command}"


def test_constraints_pin_what_only_the_images_install():
    pins = dict(
        line.split("==", 1) for line in (DOCKER / "constraints.txt").read_text().splitlines() if "==" in line
    )
    for name in ("wheel", "modelscope", "flash-attn", "torch", "deepspeed"):
        assert name in pins, f"{name} is not pinned in docker/constraints.txt"


def test_flash_attn_is_compiled_at_the_pinned_version():
    flash = [command for command in shell_commands("train") if "flash-attn" in command]
    assert flash and all("FLASH_ATTENTION_FORCE_BUILD=TRUE" in command for command in flash)
    assert all("-c /build/constraints.txt" in command and "flash-attn==" not in command for command in flash)


@pytest.mark.parametrize("stage", STAGES)
def test_every_url_names_a_real_host(stage):
    hosts = set(re.findall(r"https?://([^/\s\"']+)", dockerfile(stage)))
    assert hosts <= KNOWN_HOSTS, f"{stage}: unknown hosts {hosts - KNOWN_HOSTS}"


def shared_steps(stage: str, last: str) -> list[str]:
    """The final stage's instructions from its ENV up to the line starting with `last`."""
    text = dockerfile(stage)
    final = text[text.rindex("\nFROM ") :]
    start = final.index("\nENV ")
    end = final.index("\n", final.index("\n" + last, start) + 1)
    return final[start:end].splitlines()


def test_the_steps_up_to_torch_are_the_same_text_in_every_stage_image():
    torch_images = [stage for stage in STAGES if stage != "teacher"]
    reference = shared_steps(torch_images[0], "        ${TORCH_INDEX")
    for stage in torch_images[1:]:
        assert shared_steps(stage, "        ${TORCH_INDEX") == reference, stage
    # The teacher image has no torch; it shares the steps before it.
    assert (
        shared_steps("teacher", "COPY docker/constraints.txt")
        == reference[: len(shared_steps("teacher", "COPY docker/constraints.txt"))]
    )
    # The train image's wheel-building stage starts the same way, so the CPU variant builds it from cache.
    text = dockerfile("train")
    assert text.count("\n".join(reference)) == 2
