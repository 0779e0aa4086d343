"""Each stage image, built for real (CPU variant) and checked by running commands in it: its user is not
root, its stage imports with only the extras it installs, the teacher image reaches a teacher over HTTP,
the train image trains LoRA for 20 steps, QLoRA on a 4-bit student and ZeRO-2 on two ranks (torchrun,
gloo), and the eval image scores a student loaded in 4-bit."""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml

from components.common.approved_hosts import APPROVED_HOSTS_ENV
from components.common.images import STAGE_PACKAGES, STAGES
from components.common.records import Record, record_id, write_records
from components.common.tiny_model import make_tiny_model
from pipelines.demo_teacher import start_teacher_server

pytestmark = pytest.mark.images


def reversal_record(word: str) -> Record:
    prompt = [{"role": "user", "content": f"Reverse the letters of: {word}"}]
    teacher = {"provider": "test", "model": "reverser"}
    return Record(
        id=record_id(prompt, teacher),
        messages=[*prompt, {"role": "assistant", "content": word[::-1]}],
        teacher=teacher,
        split="train",
    )


def shared_folder(path):
    """A folder the images' user (uid 10001) can write, mounted into the container."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o777)
    return path


@pytest.mark.parametrize("stage", STAGES)
def test_image_runs_as_a_non_root_user(cpu_images, run_in, stage):
    ids = run_in(cpu_images[stage], "id", "-u").stdout.split()
    assert ids == ["10001"]


@pytest.mark.parametrize("stage", STAGES)
def test_stage_imports_with_only_the_extras_of_its_image(cpu_images, run_in, stage):
    run_in(cpu_images[stage], "python", "-c", f"import {STAGE_PACKAGES[stage]}.component, kfp")


def test_download_image_fetches_modelscope_sources(cpu_images, run_in):
    # modelscope:// sources need the modelscope extra on the cluster, not only in the dev venv.
    done = run_in(cpu_images["download"], "python", "-c", "import modelscope; print(modelscope.__version__)")
    assert done.stdout.strip().splitlines()[-1] == "1.40.2"


def test_teacher_image_holds_no_torch(cpu_images, run_in):
    # The API teacher's image stays small: torch belongs to the images that run models.
    done = run_in(
        cpu_images["teacher"], "python", "-c", "import importlib.util as u; print(u.find_spec('torch'))"
    )
    assert done.stdout.strip() == "None"


# The stage's own client (components/common/openai_api.py), inside the image, against the demo teacher on loopback.
ASK_TEACHER = """
import asyncio, sys
from components.common.openai_api import ApiTeacher
from components.common.provider_config import ProviderConfig

async def ask():
    provider = ProviderConfig(name="demo", base_url=sys.argv[1], model="demo-teacher", api_key_env="TEACHER_API_KEY")
    async with ApiTeacher(provider) as teacher:
        outcome = await teacher.ask([{"role": "user", "content": "Reverse the letters of: kite"}])
    print(outcome.choices[0].content)

asyncio.run(ask())
"""


def test_teacher_image_reaches_a_teacher_over_http(cpu_images, run_in):
    with start_teacher_server(api_key="secret-key") as server:
        done = run_in(
            cpu_images["teacher"],
            "python",
            "-c",
            ASK_TEACHER,
            server.base_url,
            environment={"TEACHER_API_KEY": "secret-key", APPROVED_HOSTS_ENV: server.base_url},
        )
    assert done.stdout.strip().splitlines()[-1] == "etik"
    assert server.requests_by_prompt["Reverse the letters of: kite"] == 1


TRAIN_CLI = ("python", "-m", "components.train", "--config", "/s3/train.yaml")


def train_folder(tmp_path, **settings) -> dict:
    """A folder for the image's user holding the tiny student, reversal records and the train config."""
    shared = shared_folder(tmp_path / "shared")
    make_tiny_model("tiny://qwen2?warmup_steps=0", shared / "student")
    words = ["abc", "hello", "kite", "moon", "star", "river", "stone", "cloud"]
    write_records(
        shared_folder(shared / "data") / "train.jsonl", [reversal_record(word) for word in words * 4]
    )
    config = {
        "student_dir": "/s3/student",
        "data_dir": "/s3/data",
        "output_dir": "/s3/out",
        "tensorboard_dir": "/s3/tb",
        "method": "lora",
        "batch_size": 8,
        "learning_rate": 1e-3,
        "logging_steps": 5,
        "max_length": 64,
        **settings,
    }
    (shared / "train.yaml").write_text(yaml.safe_dump(config))
    # safetensors writes its files 0600; the launcher hands the task files its user can read.
    for path in shared.rglob("*"):
        path.chmod(0o777 if path.is_dir() else 0o644)
    return shared


def printed_results(stdout: str) -> list[dict]:
    """The results the stage CLI printed, as indented JSON, after its logs."""
    return [
        json.loads(block) for block in re.findall(r"^\{\n.*?^\}$", stdout, flags=re.MULTILINE | re.DOTALL)
    ]


def test_train_image_trains_a_lora_adapter_for_20_steps(cpu_images, run_in, tmp_path):
    shared = train_folder(tmp_path, max_steps=20)
    done = run_in(cpu_images["train"], *TRAIN_CLI, mounts={shared: "/s3"})
    result = printed_results(done.stdout)[-1]
    assert result["steps"] == 20 and result["method"] == "lora"
    assert (shared / "out" / "adapter_config.json").is_file()
    assert list((shared / "out").glob("adapter_model.safetensors"))


def test_train_image_trains_qlora_on_a_4bit_student(cpu_images, run_in, tmp_path):
    # Recipe 1's method: bitsandbytes' 4-bit base on the CPU, as the image's train extra installs it.
    shared = train_folder(
        tmp_path, method="qlora", precision="bf16", max_steps=4, gradient_checkpointing=True
    )
    done = run_in(cpu_images["train"], *TRAIN_CLI, mounts={shared: "/s3"})
    result = printed_results(done.stdout)[-1]
    assert result["steps"] == 4 and result["method"] == "qlora"
    assert "method: qlora (4-bit bitsandbytes) runs on the CPU" in done.stdout + done.stderr
    summary = json.loads((shared / "out" / "train_summary.json").read_text())
    assert summary["method"] == "qlora" and summary["precision"] == "bf16"
    assert list((shared / "out").glob("adapter_model.safetensors"))


def test_train_image_runs_zero2_on_two_ranks_over_gloo(cpu_images, run_in, tmp_path):
    # DeepSpeed builds its shm comm op in the image (g++ and the Python headers of the CPU variant) into
    # the user's cache, then both ranks train; the loss is reduced over them, so they print the same.
    shared = train_folder(tmp_path, deepspeed="zero2", precision="bf16", max_steps=3, batch_size=4)
    # The container's hostname resolves nowhere (buildah writes no /etc/hosts entry for it): the ranks
    # meet on loopback.
    launcher = ["python", "-m", "torch.distributed.run", "--standalone", "--local-addr", "127.0.0.1"]
    launcher += ["--nproc_per_node", "2"]
    done = run_in(
        cpu_images["train"],
        *launcher,
        *TRAIN_CLI[1:],
        mounts={shared: "/s3"},
        environment={"OMP_NUM_THREADS": "1"},
    )
    losses = re.findall(r'"final_loss": ([0-9.]+)', done.stdout)
    assert len(losses) == 2 and losses[0] == losses[1]
    assert "deepspeed: zero2 runs on the CPU" in done.stdout + done.stderr
    summary = json.loads((shared / "out" / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["deepspeed"] == "zero2"


def test_eval_image_scores_a_student_loaded_in_4bit(cpu_images, run_in, tmp_path):
    # Recipe 1 scores its student in 4-bit: bitsandbytes is in the eval image.
    shared = shared_folder(tmp_path / "shared")
    make_tiny_model("tiny://qwen2?warmup_steps=0", shared / "student")
    test_records = [reversal_record(word) for word in ("kite", "moon", "star")]
    write_records(shared_folder(shared / "data") / "test.jsonl", test_records)
    config = {
        "student_dir": "/s3/student",
        "trained_dir": "/s3/student",
        "data_dir": "/s3/data",
        "output_dir": "/s3/eval",
        "quantization": "4bit",
        "max_new_tokens": 4,
        "batch_size": 3,
    }
    (shared / "eval.yaml").write_text(yaml.safe_dump(config))
    for path in shared.rglob("*"):
        path.chmod(0o777 if path.is_dir() else 0o644)
    done = run_in(
        cpu_images["eval"],
        "python",
        "-m",
        "components.evaluate",
        "--config",
        "/s3/eval.yaml",
        mounts={shared: "/s3"},
    )
    assert "quantization: 4bit (bitsandbytes) runs on the CPU" in done.stdout + done.stderr
    assert (shared / "eval" / "eval.json").is_file()
