"""The compiled pipeline is valid KFP IR, asks the cluster for what each stage needs, and holds no secret."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from pipelines.images import STAGES

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "pipelines" / "distill_pipeline.yaml"
# The five stages and the hand-off (in the eval image), plus the teacher's fan-out: a shard list, a
# ParallelFor of shard tasks (teacher-data inside the loop) and the final teacher-data-2 that merges,
# filters and splits; the served teacher's branches (start it, or none) and the task deleting it.
STAGE_TASKS = {
    "download-model",
    "teacher-data-2",
    "train-student",
    "merge-adapter",
    "evaluate-student",
    "register-model",
}
FAN_OUT_TASKS = {"teacher-shard-indices", "for-loop-4"}
TEACHER_SERVER_TASKS = {"condition-branches-1", "remove-teacher-server"}
CHECK_TASK = "check-run"  # every stage's Config over the run's parameters, before anything else
TRAIN = "exec-train-student"
STORE_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
# Secret values present while compiling, as on a CI runner that holds them: none may reach the YAML.
PLANTED = {
    name: f"planted-{name.lower()}-value" for name in ("TEACHER_API_KEY", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN")
}
# The Secret variables of each task, exactly: what its stage reads and nothing more.
SECRET_ENV = {
    "exec-check-run": set(),
    "exec-download-model": STORE_KEYS | {"HF_TOKEN"},
    "exec-teacher-shard-indices": set(),
    "exec-teacher-data": STORE_KEYS | {"TEACHER_API_KEY", "JUDGE_API_KEY"},
    "exec-teacher-data-2": STORE_KEYS | {"TEACHER_API_KEY", "JUDGE_API_KEY"},
    TRAIN: STORE_KEYS | {"HF_TOKEN", "SWANLAB_API_KEY", "WANDB_API_KEY"},  # the optional trackers' keys
    "exec-merge-adapter": set(),
    "exec-evaluate-student": {"JUDGE_API_KEY"},  # the optional LLM judge
    "exec-register-model": {"MODEL_REGISTRY_TOKEN"},  # the optional Model Registry token
    # KServe through the pod's service account only
    "exec-start-teacher-server": set(),
    "exec-no-teacher-server": set(),
    "exec-remove-teacher-server": set(),
}


def compile_to(path: Path, registry: str, tag: str) -> list[dict]:
    """Compile in a fresh interpreter: image names are read from REGISTRY/TAG when components import."""
    env = {**os.environ, **PLANTED, "REGISTRY": registry, "TAG": tag}
    subprocess.run(
        [sys.executable, "-m", "pipelines.distill_pipeline", str(path)], check=True, env=env, cwd=REPO
    )
    return list(yaml.safe_load_all(path.read_text()))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[dict, dict]:
    docs = compile_to(tmp_path_factory.mktemp("compiled") / "p.yaml", "registry.example.com/ml", "t3st")
    assert len(docs) == 2, "expected the pipeline spec and the Kubernetes platform spec"
    return docs[0], docs[1]


def test_documents_parse_into_pipeline_and_platform_spec(compiled):
    pipeline, platform = compiled
    spec = json_format.ParseDict(pipeline, pipeline_spec_pb2.PipelineSpec())
    json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
    assert spec.pipeline_info.name == "llm-distillation"
    assert set(spec.root.dag.tasks) == STAGE_TASKS | FAN_OUT_TASKS | TEACHER_SERVER_TASKS | {CHECK_TASK}


def test_the_run_check_comes_first_with_every_parameter(compiled):
    pipeline, _ = compiled
    tasks = pipeline["root"]["dag"]["tasks"]
    for first in ("download-model", "teacher-shard-indices"):
        assert CHECK_TASK in tasks[first]["dependentTasks"], f"{first} may start before the run check"
    wired = {
        name: wiring["componentInputParameter"]
        for name, wiring in tasks[CHECK_TASK]["inputs"]["parameters"].items()
    }
    assert wired == {name: name for name in pipeline["root"]["inputDefinitions"]["parameters"]}


def test_teacher_shards_fan_out_then_merge(compiled):
    pipeline, _ = compiled
    tasks = pipeline["root"]["dag"]["tasks"]
    loop = tasks["for-loop-4"]
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("teacher-shard-indices-Output")
    assert "for-loop-4" in tasks["teacher-data-2"]["dependentTasks"]
    shard = pipeline["components"]["comp-for-loop-4"]["dag"]["tasks"]["teacher-data"]
    assert (
        shard["inputs"]["parameters"]["teacher_shards"]["componentInputParameter"]
        == "pipelinechannel--teacher_shards"
    )
    train = tasks["train-student"]["inputs"]["artifacts"]["data"]["taskOutputArtifact"]
    assert train["producerTask"] == "teacher-data-2"


def test_teacher_server_starts_before_the_teacher_when_a_source_is_given_and_is_removed_at_the_end(compiled):
    pipeline, _ = compiled
    parameters = pipeline["root"]["inputDefinitions"]["parameters"]
    assert parameters["teacher_server_source"]["defaultValue"] == ""
    assert "empty: none" in parameters["teacher_server_source"]["description"]
    assert parameters["teacher_server_gpus"]["defaultValue"] == 1
    tasks = pipeline["root"]["dag"]["tasks"]
    branches = pipeline["components"]["comp-condition-branches-1"]["dag"]["tasks"]
    start = pipeline["components"][branches["condition-2"]["componentRef"]["name"]]["dag"]["tasks"]
    assert "teacher_server_source" in branches["condition-2"]["triggerPolicy"]["condition"]
    assert tasks["condition-branches-1"]["dependentTasks"] == [CHECK_TASK]
    assert start["start-teacher-server"]["cachingOptions"] == {}  # never cached: it makes a server
    shard = pipeline["components"]["comp-for-loop-4"]["dag"]["tasks"]["teacher-data"]["inputs"]["parameters"]
    for served in (
        tasks["teacher-data-2"]["inputs"]["parameters"]["teacher_server_address"],
        tasks["train-student"]["inputs"]["parameters"]["teacher_server_address"],
        shard["teacher_server_address"],
    ):
        assert "condition-branches-1" in json.dumps(served)
    # The exit task: runs once the teacher and train tasks have ended, failed or not.
    remove = tasks["remove-teacher-server"]
    assert remove["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert set(remove["dependentTasks"]) == {"teacher-data-2", "train-student"}
    wired = remove["inputs"]["parameters"]
    assert wired["teacher_server_source"]["componentInputParameter"] == "teacher_server_source"


def test_each_stage_runs_in_its_own_image_named_from_registry_and_tag(compiled):
    pipeline, _ = compiled
    executors = pipeline["deploymentSpec"]["executors"]
    images = {name: ex["container"]["image"] for name, ex in executors.items()}
    assert len(set(images.values())) == len(STAGES)
    for stage in STAGES:
        assert f"registry.example.com/ml/kfp-distill-{stage}:t3st" in images.values()
    assert not any(image.endswith(":latest") for image in images.values())


def test_train_requests_gpus_from_a_pipeline_parameter(compiled):
    pipeline, _ = compiled
    train = pipeline["deploymentSpec"]["executors"][TRAIN]["container"]["resources"]
    assert train["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert "train_gpus" in train["accelerator"]["resourceCount"]
    assert pipeline["root"]["inputDefinitions"]["parameters"]["train_gpus"]["defaultValue"] == 1
    assert "train_memory" in train["resourceMemoryLimit"] and "train_cpu" in train["resourceCpuLimit"]


def test_multi_node_training_is_a_parameter_of_the_train_task(compiled):
    pipeline, _ = compiled
    inputs = pipeline["root"]["dag"]["tasks"]["train-student"]["inputs"]["parameters"]
    assert inputs["train_nodes"]["componentInputParameter"] == "train_nodes"
    assert inputs["train_job_gpus_per_node"]["componentInputParameter"] == "train_job_gpus_per_node"
    job_env = inputs["job_env"]["runtimeValue"]["constant"]
    assert set(job_env["secrets"]) == {"distill-s3", "distill-trackers"}
    assert job_env["optional_secrets"] == ["distill-trackers"]


def test_secrets_are_wired_by_reference_only(compiled):
    pipeline, platform = compiled
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for task in ("exec-teacher-data", "exec-teacher-data-2"):
        secret_envs = {
            env["envVar"] for secret in executors[task]["secretAsEnv"] for env in secret["keyToEnv"]
        }
        assert {"TEACHER_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= secret_envs
    text = yaml.safe_dump(pipeline) + yaml.safe_dump(platform)
    assert not [value for value in PLANTED.values() if value in text]
    # No environment variable in any container carries a literal value that looks like a credential.
    for executor in pipeline["deploymentSpec"]["executors"].values():
        for env in executor["container"].get("env", []):
            assert not any(word in env["name"].upper() for word in ("KEY", "SECRET", "TOKEN", "PASSWORD"))


def test_each_task_and_the_multi_node_pods_get_only_the_secrets_they_read(compiled):
    """Least privilege: train and the PyTorchJob pods never hold the teacher's key, merge no store key."""
    pipeline, platform = compiled
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(pipeline["deploymentSpec"]["executors"]) == set(SECRET_ENV)
    for task, expected in SECRET_ENV.items():
        references = executors.get(task, {}).get("secretAsEnv", [])
        assert {env["envVar"] for secret in references for env in secret["keyToEnv"]} == expected, task
        config_maps = {c["configMapName"] for c in executors.get(task, {}).get("configMapAsEnv", [])}
        holds_api_key = bool({"TEACHER_API_KEY", "JUDGE_API_KEY"} & expected)
        assert ("distill-s3-endpoint" in config_maps) == bool(STORE_KEYS & expected), task
        assert ("distill-approved-hosts" in config_maps) == holds_api_key, task
    train_inputs = pipeline["root"]["dag"]["tasks"]["train-student"]["inputs"]["parameters"]
    job_env = train_inputs["job_env"]["runtimeValue"]["constant"]
    trackers = {"SWANLAB_API_KEY", "WANDB_API_KEY"}  # node 0 reports to report_to's trackers
    assert {
        variable for keys in job_env["secrets"].values() for variable in keys.values()
    } == STORE_KEYS | trackers


def test_training_gets_shared_memory_and_no_cache(compiled):
    pipeline, platform = compiled
    train_platform = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][TRAIN]
    assert train_platform["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
    train_task = pipeline["root"]["dag"]["tasks"]["train-student"]
    assert not train_task.get("cachingOptions", {}).get("enableCache", False)


def test_every_parameter_is_described(compiled):
    pipeline, _ = compiled
    parameters = pipeline["root"]["inputDefinitions"]["parameters"]
    undocumented = [name for name, spec in parameters.items() if not spec.get("description")]
    assert not undocumented


def test_committed_yaml_is_up_to_date(tmp_path):
    """`make compile` output is committed; compiling again with the same image names must match it."""
    committed = list(yaml.safe_load_all(COMMITTED.read_text()))
    image = committed[0]["deploymentSpec"]["executors"][TRAIN]["container"]["image"]
    registry, _, rest = image.rpartition("/kfp-distill-")
    tag = rest.partition(":")[2]
    fresh = compile_to(tmp_path / "fresh.yaml", registry, tag)
    assert fresh == committed, "pipelines/distill_pipeline.yaml is stale: run `make compile` and commit it"


def test_local_runs_build_the_pipeline_without_retry_back_off():
    """kfp.local honours retry policies: bad input would otherwise fail only after minutes of back-off."""
    from pipelines.distill_pipeline import build_pipeline, distill_pipeline

    def retry_policies(pipeline) -> int:
        spec = json_format.MessageToDict(pipeline.pipeline_spec)
        return yaml.safe_dump(spec).count("retryPolicy")

    assert retry_policies(distill_pipeline) > 0
    assert retry_policies(build_pipeline(retries=False)) == 0
