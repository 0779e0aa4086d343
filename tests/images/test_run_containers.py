"""pipelines/run_containers.py's reading of the compiled pipeline, without an engine: the task order, the
executor input each task gets (as the KFP launcher fills it), runtime placeholders, and Secrets as env."""

from __future__ import annotations

import pytest
import yaml

from pipelines.run_containers import (
    PIPELINE_YAML,
    Artifact,
    ContainerLauncher,
    TaskOutputs,
    condition_holds,
    dag_outputs,
    fill_placeholders,
    local_images,
    task_order,
)

SPEC = next(yaml.safe_load_all(PIPELINE_YAML.read_text()))


@pytest.fixture
def launcher(tmp_path):
    return ContainerLauncher(
        PIPELINE_YAML,
        tmp_path,
        engine="buildah",
        images=local_images(PIPELINE_YAML),
        secrets={"distill-s3": {"access-key-id": "id", "secret-access-key": "sk"}},
    )


def test_tasks_run_after_the_tasks_they_depend_on():
    order = task_order(SPEC["root"]["dag"]["tasks"])
    assert order[0] == "check-run"
    assert order.index("for-loop-4") < order.index("teacher-data-2") < order.index("train-student")
    assert order.index("download-model") < order.index("train-student") < order.index("merge-adapter")
    assert order.index("merge-adapter") < order.index("evaluate-student") < order.index("register-model")
    assert order[-1] == "register-model"


@pytest.mark.parametrize(
    "source, branch", [("", "no-teacher-server"), ("hf://org/teacher", "teacher-server")]
)
def test_the_served_teachers_if_and_else_branches_follow_the_source_and_its_oneof_the_branch_that_ran(
    source, branch
):
    branches = SPEC["components"]["comp-condition-branches-1"]["dag"]
    inputs = {"pipelinechannel--teacher_server_source": source}
    ran = {
        name: condition_holds(task["triggerPolicy"]["condition"], inputs)
        for name, task in branches["tasks"].items()
    }
    assert [branches["tasks"][name]["taskInfo"]["name"] for name, holds in ran.items() if holds] == [branch]
    (oneof,) = branches["outputs"]["parameters"]
    selectors = branches["outputs"]["parameters"][oneof]["valueFromOneof"]["parameterSelectors"]
    done = {
        selector["producerSubtask"]: TaskOutputs(
            parameters={selector["outputParameterKey"]: selector["producerSubtask"]},
            skipped=not ran[selector["producerSubtask"]],
        )
        for selector in selectors
    }
    (chosen,) = [name for name, holds in ran.items() if holds]
    assert dag_outputs(branches, done).parameters == {oneof: chosen}


def test_a_condition_the_launcher_cannot_read_ends_the_run_naming_it():
    with pytest.raises(SystemExit, match="only one input compared with a literal"):
        condition_holds("int(inputs.parameter_values['n']) > 2", {"n": 3})


def test_a_cycle_is_refused():
    tasks = {"a": {"dependentTasks": ["b"]}, "b": {"dependentTasks": ["a"]}}
    with pytest.raises(ValueError, match="cycle"):
        task_order(tasks)


def test_runtime_placeholders_take_the_run_id_and_the_tasks_own_inputs():
    inputs = {"pipelinechannel--train_gpus": 2, "pipelinechannel--train_memory": "64Gi"}
    assert fill_placeholders("{{$.inputs.parameters['pipelinechannel--train_gpus']}}", inputs, "r1") == 2
    assert fill_placeholders("run-{{$.pipeline_job_uuid}}", inputs, "r1") == "run-r1"
    nested = {"env": ["{{$.inputs.parameters['pipelinechannel--train_memory']}} of {{$.pipeline_job_uuid}}"]}
    assert fill_placeholders(nested, inputs, "r1") == {"env": ["64Gi of r1"]}


def test_executor_input_maps_artifacts_to_s3_uris_and_outputs_under_s3(launcher):
    component = SPEC["components"]["comp-merge-adapter"]
    inputs = {
        name: Artifact(name, "system.Model", f"s3://demo/pipeline_root/r/{name}")
        for name in ("base", "data", "trained")
    }
    executor_input, outputs, output_file = launcher.executor_input(
        "merge-adapter", component, {"merge_dtype": "auto"}, inputs
    )
    root = f"s3://demo/pipeline_root/{launcher.run_id}/merge-adapter"
    assert output_file == f"{root}/executor_output.json"
    assert (
        executor_input["outputs"]["outputFile"]
        == f"/s3/demo/pipeline_root/{launcher.run_id}/merge-adapter/executor_output.json"
    )
    assert outputs["merged"].uri == f"{root}/merged"
    (merged,) = executor_input["outputs"]["artifacts"]["merged"]["artifacts"]
    assert merged["uri"] == f"{root}/merged" and merged["type"] == {"schemaTitle": "system.Model"}
    assert (
        executor_input["inputs"]["artifacts"]["base"]["artifacts"][0]["uri"]
        == "s3://demo/pipeline_root/r/base"
    )
    # Parameters not given take the component's defaults, as the driver resolves them.
    assert executor_input["inputs"]["parameterValues"]["merge_dtype"] == "auto"
    assert "merge_max_shard_size" in executor_input["inputs"]["parameterValues"]


def test_integer_parameters_reach_the_executor_as_integers(launcher):
    component = SPEC["components"]["comp-teacher-shard-indices"]
    executor_input, _, _ = launcher.executor_input("plan", component, {"teacher_shards": 3.0}, {})
    assert executor_input["inputs"]["parameterValues"] == {"teacher_shards": 3}
    assert isinstance(executor_input["inputs"]["parameterValues"]["teacher_shards"], int)
    assert executor_input["outputs"]["parameters"]["Output"]["outputFile"].startswith("/s3/demo/")


def test_secrets_reach_a_task_as_the_environment_its_platform_spec_names(launcher):
    environment = launcher.task_environment("exec-download-model")
    assert environment == {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "sk"}  # distill-hf is optional
    with pytest.raises(SystemExit, match="Secret 'distill-teacher' is required by exec-teacher-data"):
        launcher.task_environment("exec-teacher-data")


def test_every_image_of_the_spec_maps_to_a_local_stage_image(monkeypatch):
    monkeypatch.setenv("REGISTRY", "localhost/kfp-distill")
    monkeypatch.setenv("TAG", "cpu")
    images = local_images(PIPELINE_YAML)
    assert sorted(set(images.values())) == sorted(
        f"localhost/kfp-distill/kfp-distill-{stage}:cpu"
        for stage in ("download", "eval", "merge", "teacher", "train")
    )


def test_unknown_pipeline_parameters_are_refused(launcher):
    with pytest.raises(SystemExit, match="train_maxsteps: not a parameter of the pipeline"):
        launcher.run({"train_maxsteps": 3})


def test_an_environment_given_to_every_task_is_kept_beside_its_secrets(tmp_path):
    launcher = ContainerLauncher(
        PIPELINE_YAML,
        tmp_path,
        engine="buildah",
        images=local_images(PIPELINE_YAML),
        secrets={"distill-s3": {"access-key-id": "id", "secret-access-key": "sk"}},
        environment={"OMP_NUM_THREADS": "1"},
    )
    environment = launcher.task_environment("exec-download-model")
    assert environment["OMP_NUM_THREADS"] == "1" and environment["AWS_ACCESS_KEY_ID"] == "id"


def test_config_maps_reach_a_task_as_the_environment_its_platform_spec_names(tmp_path):
    launcher = ContainerLauncher(
        PIPELINE_YAML,
        tmp_path,
        engine="buildah",
        images=local_images(PIPELINE_YAML),
        secrets={
            "distill-teacher": {"api-key": "k"},
            "distill-s3": {"access-key-id": "id", "secret-access-key": "sk"},
        },
        config_maps={"distill-approved-hosts": {"api-hosts": "http://127.0.0.1:8000"}},
    )
    teacher = launcher.task_environment("exec-teacher-data")
    assert teacher["DISTILL_APPROVED_API_HOSTS"] == "http://127.0.0.1:8000"
    assert "AWS_ENDPOINT_URL" not in teacher  # an optional ConfigMap that was not given is left out
    assert "DISTILL_APPROVED_API_HOSTS" not in launcher.task_environment("exec-merge-adapter")
