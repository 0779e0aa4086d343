"""`python -m pipelines.submit` against a fake KFP REST API on loopback, through the real kfp.Client:
upload once, one pipeline version per commit, runs with parameters from a run config, --wait exit codes,
and errors that list what is valid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines import submit
from pipelines.loopback import ServerThread
from tests.packaging.fake_kfp import FakeKfp

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The real pipeline, compiled once for the module."""
    return submit.compile_package(tmp_path_factory.mktemp("compiled") / "distill_pipeline.yaml")


@pytest.fixture
def kfp_server(monkeypatch):
    fake = FakeKfp()
    with ServerThread(fake.app()) as server:
        monkeypatch.setenv("KFP_HOST", server.url)
        monkeypatch.setenv("KFP_TOKEN", fake.token)
        monkeypatch.delenv("KFP_NAMESPACE", raising=False)
        yield fake


def write_config(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_submit(*args: str) -> int:
    return submit.main(["--poll", "0", *args])


def test_first_submission_uploads_the_pipeline_and_a_version_named_after_the_commit(
    kfp_server, package, tmp_path
):
    config = write_config(
        tmp_path,
        {
            "student_source": "hf://Qwen/Qwen2.5-0.5B-Instruct",
            "train": {"gpus": 4, "method": "qlora"},
            "seed": 7,
        },
    )
    status = run_submit("--package", str(package), "--config", str(config), "--version", "abc1234", "--wait")

    assert status == 0
    (pipeline,) = kfp_server.pipelines.values()
    assert pipeline["display_name"] == "llm-distillation"
    ours = [v for v in kfp_server.versions.values() if v["display_name"] == "abc1234"]
    assert len(ours) == 1
    pipeline_spec, platform_spec = yaml.safe_load_all(package.read_text())
    assert ours[0]["spec"] == {**pipeline_spec, "platform_spec": platform_spec}
    (experiment,) = kfp_server.experiments.values()
    assert experiment["display_name"] == "distillation"
    (run,) = kfp_server.runs.values()
    assert run["pipeline_version_reference"]["pipeline_version_id"] == ours[0]["pipeline_version_id"]
    assert run["experiment_id"] == experiment["experiment_id"]
    assert run["runtime_config"]["parameters"] == {
        "student_source": "hf://Qwen/Qwen2.5-0.5B-Instruct",
        "train_gpus": 4,
        "train_method": "qlora",
        "seed": 7,
    }
    assert run["state"] == "SUCCEEDED"


def test_resubmitting_a_commit_reuses_its_version_and_a_new_commit_adds_one(kfp_server, package, capsys):
    assert run_submit("--package", str(package), "--version", "abc1234") == 0
    assert run_submit("--package", str(package), "--version", "abc1234", "--run-name", "again") == 0
    assert run_submit("--package", str(package), "--version", "def5678") == 0

    names = sorted(v["display_name"] for v in kfp_server.versions.values())
    assert names == ["abc1234", "def5678", "llm-distillation"]
    assert len(kfp_server.pipelines) == 1 and len(kfp_server.experiments) == 1
    used = [run["pipeline_version_reference"]["pipeline_version_id"] for run in kfp_server.runs.values()]
    assert used[0] == used[1] != used[2]
    assert {run["display_name"] for run in kfp_server.runs.values()} >= {"again", "llm-distillation-def5678"}
    assert "created: pipeline" in capsys.readouterr().out


def test_wait_exits_non_zero_when_the_run_fails(kfp_server, package, capsys):
    kfp_server.final_state = "FAILED"
    assert run_submit("--package", str(package), "--version", "abc1234", "--wait") == 1
    assert "finished: FAILED" in capsys.readouterr().out


def test_wait_gives_up_after_the_timeout(kfp_server, package, capsys):
    kfp_server.final_state = "RUNNING"
    assert run_submit("--package", str(package), "--version", "abc1234", "--wait", "--timeout", "0") == 3
    assert "did not finish within --timeout 0s" in capsys.readouterr().err


def test_without_wait_the_run_is_only_created(kfp_server, package):
    assert run_submit("--package", str(package), "--version", "abc1234") == 0
    assert kfp_server.polls == {}


def test_unknown_parameters_are_refused_with_the_valid_names(kfp_server, package, tmp_path, capsys):
    config = write_config(tmp_path, {"train_gpu": 2, "learning_rate": 1e-4})
    assert run_submit("--package", str(package), "--config", str(config), "--version", "v") == 2
    error = capsys.readouterr().err
    assert "unknown pipeline parameter(s) learning_rate, train_gpu" in error
    assert "(did you mean 'train_learning_rate'?) (did you mean 'train_gpus'?)" in error
    assert "valid parameters are:" in error and "train_gpus" in error and "train_learning_rate" in error
    grouped = write_config(tmp_path, {"train": {"gpu": 2}})
    assert run_submit("--package", str(package), "--config", str(grouped), "--version", "v") == 2
    assert "train.gpu: unknown field of the train stage (did you mean 'gpus'?)" in capsys.readouterr().err
    assert kfp_server.runs == {}


def test_values_of_the_wrong_type_name_the_parameter(kfp_server, package, capsys):
    assert run_submit("--package", str(package), "--version", "v", "--set", "train_gpus=many") == 2
    assert "parameter train_gpus must be number_integer, got str 'many'" in capsys.readouterr().err


def test_set_overrides_the_run_config(kfp_server, package, tmp_path):
    config = write_config(tmp_path, {"train_gpus": 2, "teacher_overrides": {"max_cost": 20}})
    assert (
        run_submit(
            "--package", str(package), "--config", str(config), "--set", "train.gpus=8", "--version", "v"
        )
        == 0
    )
    (run,) = kfp_server.runs.values()
    assert run["runtime_config"]["parameters"] == {"train_gpus": 8, "teacher_overrides": {"max_cost": 20}}


def test_a_wrong_token_is_reported_with_what_to_check(kfp_server, package, monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", "expired")
    assert run_submit("--package", str(package), "--version", "v") == 4
    error = capsys.readouterr().err
    assert "KFP API answered 401" in error and "KFP_TOKEN" in error


def test_dry_run_compiles_with_registry_and_tag_without_contacting_the_cluster():
    # A fresh process, as `make submit` runs it: image names are fixed when the pipeline module makes the components.
    environment = {
        **os.environ,
        "KFP_HOST": "http://127.0.0.1:9",
        "REGISTRY": "registry.example.com/ml",
        "TAG": "abc1234",
    }
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.submit", "--dry-run", "--set", "train_gpus=2", "--version", "v"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    printed = yaml.safe_load(result.stdout)
    assert printed["params"] == {"train_gpus": 2}
    assert Path(printed["package"]) == REPO / "build" / "distill_pipeline.yaml"
    assert "registry.example.com/ml/kfp-distill-train:abc1234" in Path(printed["package"]).read_text()


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_version_name_is_the_commit_and_marks_uncommitted_changes(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one")
    git(tmp_path, "add", "a.txt")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "one")
    sha = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert submit.git_version_name(tmp_path) == sha
    (tmp_path / "a.txt").write_text("two")
    assert submit.git_version_name(tmp_path).startswith(f"{sha}-dirty-")


def test_version_name_outside_git_asks_for_version(tmp_path):
    with pytest.raises(submit.ConfigError, match="pass --version"):
        submit.git_version_name(tmp_path)


def test_a_grouped_run_config_spells_fields_as_the_stage_yaml_and_routes_the_rest_to_overrides(
    kfp_server, package, tmp_path
):
    config = write_config(
        tmp_path,
        {"train": {"gpus": 2, "lora": {"r": 8, "dropout": 0.1}, "deepspeed": "zero2"}, "eval": {"top_k": 5}},
    )
    assert run_submit("--package", str(package), "--config", str(config), "--version", "v") == 0
    (run,) = kfp_server.runs.values()
    assert run["runtime_config"]["parameters"] == {
        "train_gpus": 2,
        "train_lora_r": 8,
        "train_overrides": {"lora": {"dropout": 0.1}, "deepspeed": "zero2"},
        "eval_overrides": {"top_k": 5},
    }


@pytest.mark.parametrize(
    ("assignments", "error"),
    [
        (["train_lora_r=4", "train.lora.r=8"], "error: train_lora_r and train.lora.r both set; give it once"),
        (
            ["train_overrides.lora.r=4"],
            "error: train_lora_r and train_overrides.lora.r both set; give it once, as train_lora_r",
        ),
        (
            ["train.lora_r=4"],
            "error: train.lora_r: write it as train.lora.r, as in the stage's YAML (or train_lora_r)",
        ),
        (["train.lora.r=-1"], "error: train.lora.r: must be a positive rank, got -1"),
        (
            ["train.kd.kind=logits"],
            "error: train.kd.teacher_dir: kind 'logits' needs a local teacher model folder",
        ),
        (["eval.max_new_tokens=0"], "error: eval.max_new_tokens: 0 must be at least 1"),
        (["teacher_overrides.provider.n=0"], "error: teacher.provider.n: 0 must be at least 1"),
        (["train.method=qlora", "train.deepspeed=zero3"], "error: train.deepspeed: ZeRO-3 shards parameters"),
    ],
)
def test_a_bad_run_is_refused_by_the_stage_configs_before_anything_is_submitted(
    kfp_server, package, capsys, assignments, error
):
    sets = [arg for assignment in assignments for arg in ("--set", assignment)]
    assert run_submit("--package", str(package), "--version", "v", *sets) == 2
    assert capsys.readouterr().err.startswith(error)
    assert kfp_server.runs == {} and kfp_server.pipelines == {}


def test_check_validates_a_run_file_without_a_server(package, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KFP_HOST", "http://127.0.0.1:9")  # nothing listens: --check must not ask it
    good = write_config(tmp_path, {"train": {"method": "full", "max_steps": 50}, "eval": {"max_samples": 0}})
    assert submit.main(["--check", "--package", str(package), "--config", str(good)]) == 0
    assert "run config OK" in capsys.readouterr().out
    bad = write_config(tmp_path, {"eval": {"gate_metric": "distilled_rouge"}})
    assert submit.main(["--check", "--package", str(package), "--config", str(bad)]) == 2
    assert capsys.readouterr().err.startswith("error: eval.gate_metric: 'distilled_rouge' is not a metric")


def test_skip_check_submits_a_run_whose_template_file_exists_only_in_the_image(kfp_server, package, capsys):
    image_only = ["--set", "teacher_overrides.text.template=/app/templates/mine.j2", "--version", "v"]
    assert run_submit("--package", str(package), *image_only) == 2
    assert "text.template: '/app/templates/mine.j2' is neither a shipped template" in capsys.readouterr().err
    assert run_submit("--package", str(package), "--skip-check", *image_only) == 0
    assert len(kfp_server.runs) == 1


TRAIN_EXECUTOR = "exec-train-student"


def train_pod_labels(version: dict) -> dict:
    executors = version["spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return executors[TRAIN_EXECUTOR].get("podMetadata", {}).get("labels", {})


@pytest.mark.parametrize(
    ("train", "labels", "version"),
    [
        (
            {"train_queue_name": "team-a", "train_priority_class": "batch-high"},
            {"kueue.x-k8s.io/queue-name": "team-a", "kueue.x-k8s.io/priority-class": "batch-high"},
            "abc1234-team-a-batch-high",
        ),
        (
            {"train_queue_name": "team-a", "train_nodes": 2},
            {},
            "abc1234",
        ),  # the training job carries them instead
        ({}, {}, "abc1234"),
    ],
)
def test_a_one_pod_train_task_gets_the_runs_kueue_queue_and_priority(
    kfp_server, tmp_path, train, labels, version
):
    config = write_config(tmp_path, train)
    assert run_submit("--config", str(config), "--version", "abc1234") == 0
    (uploaded,) = [v for v in kfp_server.versions.values() if v["display_name"] == version]
    assert train_pod_labels(uploaded) == labels


def test_a_package_without_the_runs_kueue_labels_is_refused(kfp_server, package, tmp_path, capsys):
    config = write_config(tmp_path, {"train_queue_name": "team-a"})
    assert run_submit("--package", str(package), "--config", str(config), "--version", "v") == 2
    assert "train_queue_name: the pipeline in --package" in capsys.readouterr().err
    assert not kfp_server.runs
