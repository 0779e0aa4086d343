"""Run the compiled pipeline (pipelines/distill_pipeline.yaml) task by task, each task in its stage image.

    make demo-containers          # builds (or reuses) the CPU images, then runs the demo through them
    python -m pipelines.run_containers --workdir .demo-containers [--set train_max_steps=200]

This is the KFP launcher's contract, emulated on one machine with a container engine (docker, podman or
buildah; pipelines/container_engine.py): for each task of the compiled DAG, in dependency order, it takes
the container's command and args from the spec, fills `{{$}}` with an executor input (parameter values,
input and output artifacts as `s3://<bucket>/...` URIs, which the KFP executor maps to `/s3/<bucket>/...`,
and an `outputFile`), sets the environment the platform spec's Secrets name, runs the argv in the stage
image as its non-root user with the host's `<workdir>/s3` mounted at `/s3`, and reads the task's
`executor_output.json` to pass parameters and artifact metadata on. ParallelFor loops run their
iterations one after the other; a dsl.If branch runs when its condition (one input compared with a
literal) holds, and a OneOf takes the branch that ran. No stage code runs outside an image: this process
only reads YAML and JSON and starts containers. What it does not emulate: caching, retries, resource
requests, and exit tasks after a failure (the first failed task ends the run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.common.cli import parse_assignments
from pipelines.container_engine import detect_engine, run_in_image
from pipelines.demo_teacher import start_teacher_server, write_demo_dataset
from pipelines.images import image_for
from pipelines.run_local import DEMO_API_KEY, LocalRun, format_table

PIPELINE_YAML = Path(__file__).resolve().parent / "distill_pipeline.yaml"
BUCKET = "demo"
TASK_USER = "10001:10001"  # the stage images' user (docker/*.Dockerfile), as a pod's securityContext
SELF_REFERENCE = re.compile(r"\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}")
STAGE_IMAGE = re.compile(r"kfp-distill-(?P<stage>[a-z]+)(?::[^/]*)?$")
# What the KFP compiler writes for dsl.If(input == literal) and its dsl.Else: `!(...)` around it.
CONDITION = re.compile(
    r"^(?P<negated>!\()?inputs\.parameter_values\['(?P<name>[^']+)'\] (?P<op>==|!=) "
    r"(?P<literal>'[^']*'|true|false|-?[0-9.]+)(?(negated)\))$"
)


def s3_path(root: Path, uri: str) -> Path:
    """Where `s3://bucket/key` lies on the host: <root>/bucket/key, mounted in the task at /s3/bucket/key."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri}: the container runner keeps artifacts under s3:// URIs")
    return root / uri.removeprefix("s3://")


def container_path(uri: str) -> str:
    return "/s3/" + uri.removeprefix("s3://")


def cast(value: Any, parameter_type: str) -> Any:
    """A parameter value as its declared type; the compiled spec writes integer defaults as 8.0."""
    if parameter_type == "NUMBER_INTEGER" and isinstance(value, float) and value.is_integer():
        return int(value)
    if parameter_type == "NUMBER_DOUBLE" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def fill_placeholders(value: Any, inputs: dict[str, Any], run_id: str) -> Any:
    """Resolve `{{$.pipeline_job_uuid}}` and `{{$.inputs.parameters['x']}}` in a runtime constant."""
    if isinstance(value, dict):
        return {key: fill_placeholders(item, inputs, run_id) for key, item in value.items()}
    if isinstance(value, list):
        return [fill_placeholders(item, inputs, run_id) for item in value]
    if not isinstance(value, str):
        return value
    whole = SELF_REFERENCE.fullmatch(value)
    if whole:
        return inputs[whole[1]]
    value = value.replace("{{$.pipeline_job_uuid}}", run_id)
    return SELF_REFERENCE.sub(lambda match: str(inputs[match[1]]), value)


@dataclass
class Artifact:
    name: str
    schema_title: str
    uri: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_executor_input(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": {"schemaTitle": self.schema_title},
            "uri": self.uri,
            "metadata": self.metadata,
        }


@dataclass
class TaskOutputs:
    parameters: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    skipped: bool = False  # a dsl.If branch whose condition did not hold


def condition_holds(condition: str, inputs: dict[str, Any]) -> bool:
    """A compiled dsl.If condition over the task's inputs; only one input compared with a literal (and
    its negation, the dsl.Else) is emulated."""
    match = CONDITION.match(condition)
    if match is None:
        raise SystemExit(f"condition {condition!r}: only one input compared with a literal is emulated")
    literal = match["literal"]
    value = literal[1:-1] if literal.startswith("'") else json.loads(literal)
    holds = (inputs[match["name"]] == value) == (match["op"] == "==")
    return holds != bool(match["negated"])


def dag_outputs(dag: dict, done: dict[str, TaskOutputs]) -> TaskOutputs:
    """What a DAG gives its parent: each output from its producing task, a OneOf's from the branch
    that ran."""
    outputs = TaskOutputs()
    for key, spec in dag.get("outputs", {}).get("parameters", {}).items():
        selectors = (
            spec["valueFromOneof"]["parameterSelectors"]
            if "valueFromOneof" in spec
            else [spec["valueFromParameter"]]
        )
        for selector in selectors:
            producer = done[selector["producerSubtask"]]
            if not producer.skipped:
                outputs.parameters[key] = producer.parameters[selector["outputParameterKey"]]
                break
    for key, spec in dag.get("outputs", {}).get("artifacts", {}).items():
        for selector in spec["artifactSelectors"]:
            producer = done[selector["producerSubtask"]]
            if not producer.skipped:
                outputs.artifacts[key] = producer.artifacts[selector["outputArtifactKey"]]
                break
    return outputs


def task_order(tasks: dict[str, dict]) -> list[str]:
    """The tasks of one DAG so that each comes after those it depends on (its inputs and dependentTasks)."""
    order: list[str] = []
    pending = dict(tasks)
    while pending:
        ready = [
            name
            for name, task in pending.items()
            if all(dependency in order for dependency in _dependencies(task))
        ]
        if not ready:
            raise ValueError(f"the DAG has a cycle or a missing task among {sorted(pending)}")
        for name in sorted(ready):
            order.append(name)
            del pending[name]
    return order


def _dependencies(task: dict) -> set[str]:
    needs = set(task.get("dependentTasks", []))
    inputs = task.get("inputs", {})
    for spec in inputs.get("parameters", {}).values():
        if "taskOutputParameter" in spec:
            needs.add(spec["taskOutputParameter"]["producerTask"])
    for spec in inputs.get("artifacts", {}).values():
        if "taskOutputArtifact" in spec:
            needs.add(spec["taskOutputArtifact"]["producerTask"])
    return needs


class ContainerLauncher:
    """Runs one compiled pipeline spec through a container engine, as the KFP launcher would."""

    def __init__(
        self,
        spec_path: Path,
        workdir: Path,
        engine: str,
        images: dict[str, str],
        secrets: dict[str, dict[str, str]],
        environment: dict[str, str] | None = None,
        config_maps: dict[str, dict[str, str]] | None = None,
    ) -> None:
        pipeline_spec, platform_spec = list(yaml.safe_load_all(spec_path.read_text()))
        self.spec = pipeline_spec
        self.platform = platform_spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        self.s3_root = workdir.resolve() / "s3"
        self.engine = engine
        self.images = images
        self.secrets = secrets
        self.config_maps = config_maps or {}
        self.environment = environment or {}
        self.run_id = uuid.uuid4().hex[:12]
        self.pipeline_root = f"s3://{BUCKET}/pipeline_root/{self.run_id}"
        self.seconds: dict[str, float] = {}

    # --- the pipeline -----------------------------------------------------------------------------

    def run(self, arguments: dict[str, Any]) -> dict[str, Artifact]:
        """Run the root DAG with `arguments` over the root's defaults; returns the pipeline's outputs."""
        self.s3_root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.s3_root, 0o777)
        definitions = self.spec["root"]["inputDefinitions"]["parameters"]
        unknown = sorted(set(arguments) - set(definitions))
        if unknown:
            raise SystemExit(f"{unknown[0]}: not a parameter of the pipeline; see {PIPELINE_YAML.name}")
        parameters = {
            name: cast(arguments.get(name, definition.get("defaultValue")), definition["parameterType"])
            for name, definition in definitions.items()
        }
        outputs = self._run_dag(self.spec["root"]["dag"], parameters, scope="")
        return dag_outputs(self.spec["root"]["dag"], outputs).artifacts

    def _run_dag(self, dag: dict, parameters: dict[str, Any], scope: str) -> dict[str, TaskOutputs]:
        done: dict[str, TaskOutputs] = {}
        for name in task_order(dag["tasks"]):
            task = dag["tasks"][name]
            component = self.spec["components"][task["componentRef"]["name"]]
            inputs = self._task_parameters(task, parameters, done)
            condition = task.get("triggerPolicy", {}).get("condition")
            if condition and not condition_holds(condition, inputs):
                done[name] = TaskOutputs(skipped=True)
            elif "parameterIterator" in task:
                iterator = task["parameterIterator"]
                for index, item in enumerate(inputs[iterator["items"]["inputParameter"]]):
                    loop_parameters = {**inputs, iterator["itemInput"]: item}
                    self._run_dag(component["dag"], loop_parameters, scope=f"{scope}{name}-{index}/")
                done[name] = TaskOutputs()
            elif "dag" in component:
                branch = self._run_dag(component["dag"], inputs, scope=f"{scope}{name}/")
                done[name] = dag_outputs(component["dag"], branch)
            else:
                artifacts = self._task_artifacts(task, done)
                done[name] = self._run_container(f"{scope}{name}", task, component, inputs, artifacts)
        return done

    def _task_parameters(
        self, task: dict, parameters: dict[str, Any], done: dict[str, TaskOutputs]
    ) -> dict[str, Any]:
        specs = task.get("inputs", {}).get("parameters", {})
        resolved: dict[str, Any] = {}
        deferred = {}
        for key, spec in specs.items():
            if "componentInputParameter" in spec:
                resolved[key] = parameters[spec["componentInputParameter"]]
            elif "taskOutputParameter" in spec:
                producer = spec["taskOutputParameter"]
                resolved[key] = done[producer["producerTask"]].parameters[producer["outputParameterKey"]]
            elif "runtimeValue" in spec:
                deferred[key] = spec["runtimeValue"]["constant"]
            else:
                raise ValueError(f"task input {key}: unsupported source {sorted(spec)}")
        # Runtime constants may refer to the task's other inputs (`{{$.inputs.parameters['x']}}`).
        for key, constant in deferred.items():
            resolved[key] = fill_placeholders(constant, resolved, self.run_id)
        return resolved

    @staticmethod
    def _task_artifacts(task: dict, done: dict[str, TaskOutputs]) -> dict[str, Artifact]:
        artifacts = {}
        for key, spec in task.get("inputs", {}).get("artifacts", {}).items():
            producer = spec["taskOutputArtifact"]
            artifacts[key] = done[producer["producerTask"]].artifacts[producer["outputArtifactKey"]]
        return artifacts

    # --- one task -----------------------------------------------------------------------------------

    def executor_input(
        self, task_id: str, component: dict, parameters: dict[str, Any], artifacts: dict[str, Artifact]
    ) -> tuple[dict, dict[str, Artifact], str]:
        """The executor input the launcher hands the task, its output artifacts, and its outputFile URI."""
        task_root = f"{self.pipeline_root}/{task_id.rstrip('/')}"
        definitions = component.get("inputDefinitions", {}).get("parameters", {})
        values = {}
        for name, definition in definitions.items():
            if name in parameters:
                values[name] = cast(parameters[name], definition["parameterType"])
            elif "defaultValue" in definition:
                values[name] = cast(definition["defaultValue"], definition["parameterType"])
        outputs = {
            name: Artifact(name, definition["artifactType"]["schemaTitle"], f"{task_root}/{name}")
            for name, definition in component.get("outputDefinitions", {}).get("artifacts", {}).items()
        }
        output_file = f"{task_root}/executor_output.json"
        output_parameters = {
            name: {"outputFile": container_path(f"{task_root}/parameters/{name}")}
            for name in component.get("outputDefinitions", {}).get("parameters", {})
        }
        executor_input = {
            "inputs": {
                "parameterValues": values,
                "artifacts": {
                    name: {"artifacts": [artifact.as_executor_input()]}
                    for name, artifact in artifacts.items()
                },
            },
            "outputs": {
                "parameters": output_parameters,
                "artifacts": {
                    name: {"artifacts": [artifact.as_executor_input()]} for name, artifact in outputs.items()
                },
                "outputFile": container_path(output_file),
            },
        }
        return executor_input, outputs, output_file

    def task_environment(self, executor_label: str) -> dict[str, str]:
        """The environment the platform spec's Secrets and ConfigMaps give the task (the cluster maps them
        to env); an optional one that was not given is left out, as on the cluster."""
        environment = dict(self.environment)
        executor = self.platform.get(executor_label, {})
        for kind, given in (("secret", self.secrets), ("configMap", self.config_maps)):
            for source in executor.get(f"{kind}AsEnv", []):
                name = source[f"{kind}Name"]
                values = given.get(name)
                if values is None:
                    if source.get("optional"):
                        continue
                    raise SystemExit(
                        f"{kind[0].upper()}{kind[1:]} {name!r} is required by {executor_label}; pass it"
                    )
                for mapping in source["keyToEnv"]:
                    if mapping[f"{kind}Key"] in values:
                        environment[mapping["envVar"]] = values[mapping[f"{kind}Key"]]
        return environment

    def _run_container(
        self,
        task_id: str,
        task: dict,
        component: dict,
        parameters: dict[str, Any],
        artifacts: dict[str, Artifact],
    ) -> TaskOutputs:
        executor_label = component["executorLabel"]
        container = self.spec["deploymentSpec"]["executors"][executor_label]["container"]
        executor_input, outputs, output_file = self.executor_input(task_id, component, parameters, artifacts)
        for artifact in outputs.values():
            _make_shared_folder(s3_path(self.s3_root, artifact.uri).parent, self.s3_root)
        _make_shared_folder(s3_path(self.s3_root, output_file).parent / "parameters", self.s3_root)
        argv = [*container["command"], *container.get("args", [])]
        argv = [json.dumps(executor_input) if arg == "{{$}}" else arg for arg in argv]
        image = self.images[container["image"]]
        name = task["taskInfo"]["name"]
        print(f"--- {name} ({task_id}) in {image}", flush=True)
        start = time.monotonic()
        run_in_image(
            self.engine,
            image,
            argv,
            environment=self.task_environment(executor_label),
            mounts={self.s3_root: "/s3"},
            user=TASK_USER,
        )
        self.seconds[task_id] = time.monotonic() - start
        return self._read_outputs(s3_path(self.s3_root, output_file), outputs)

    @staticmethod
    def _read_outputs(path: Path, outputs: dict[str, Artifact]) -> TaskOutputs:
        written = json.loads(path.read_text()) if path.exists() else {}
        result = TaskOutputs(parameters=dict(written.get("parameterValues", {})))
        for name, artifact in outputs.items():
            for updated in written.get("artifacts", {}).get(name, {}).get("artifacts", []):
                artifact.metadata.update(updated.get("metadata", {}))
            result.artifacts[name] = artifact
        return result


def _make_shared_folder(path: Path, root: Path) -> None:
    """Create `path` writable by the task's user, as a bucket prefix is to the launcher."""
    path.mkdir(parents=True, exist_ok=True)
    while path != root and root in path.parents:
        os.chmod(path, 0o777)
        path = path.parent


def local_images(spec_path: Path) -> dict[str, str]:
    """Each image the spec names -> the locally built image of its stage (REGISTRY, TAG of the build)."""
    pipeline_spec = next(yaml.safe_load_all(spec_path.read_text()))
    mapping = {}
    for executor in pipeline_spec["deploymentSpec"]["executors"].values():
        image = executor["container"]["image"]
        match = STAGE_IMAGE.search(image)
        if not match:
            raise SystemExit(f"{image}: not a kfp-distill-<stage> image; compile with pipelines/images.py")
        mapping[image] = image_for(match["stage"])
    return mapping


def run_demo(
    workdir: Path, parameters: dict[str, Any], engine: str, environment: dict[str, str] | None = None
) -> tuple[dict[str, Artifact], dict]:
    """The demo of `make demo`, every task in its image; returns the pipeline outputs and task timings."""
    workdir = workdir.resolve()
    defaults = LocalRun()
    with start_teacher_server(api_key=DEMO_API_KEY, model=defaults.teacher_model) as server:
        launcher = ContainerLauncher(
            PIPELINE_YAML,
            workdir,
            engine,
            local_images(PIPELINE_YAML),
            secrets={
                "distill-teacher": {"api-key": DEMO_API_KEY},
                # The demo's store is a folder under /s3, so the S3 keys are never used; the spec requires them.
                "distill-s3": {"access-key-id": "unused", "secret-access-key": "unused"},
            },
            environment=environment,
            # The demo teacher on this machine is the host an administrator approved for the key.
            config_maps={"distill-approved-hosts": {"api-hosts": server.base_url}},
        )
        dataset_uri = f"s3://{BUCKET}/datasets/prompts.jsonl"
        dataset = s3_path(launcher.s3_root, dataset_uri)
        _make_shared_folder(dataset.parent, launcher.s3_root)
        write_demo_dataset(dataset, defaults.dataset_size, seed=0)
        arguments = {
            "store_uri": container_path(f"s3://{BUCKET}/store"),
            "student_source": defaults.student_source,
            "teacher_dataset": container_path(dataset_uri),
            "teacher_provider": "openai",
            "teacher_model": defaults.teacher_model,
            "teacher_base_url": server.base_url,
            **defaults.parameters,
            **parameters,
        }
        outputs = launcher.run(arguments)
    return outputs, launcher.seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.run_containers", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workdir", type=Path, default=Path(".demo-containers"))
    parser.add_argument(
        "--set", action="append", default=[], metavar="PARAM=VALUE", help="pipeline parameter"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set in every task, as a pod template's env (e.g. OMP_NUM_THREADS=1 on a shared machine)",
    )
    args = parser.parse_args(argv)
    start = time.monotonic()
    environment = dict(pair.split("=", 1) for pair in args.env)
    outputs, seconds = run_demo(args.workdir, parse_assignments(args.set), detect_engine(), environment)
    print("\n" + format_table(outputs["metrics"].metadata))
    print("\ntask seconds: " + ", ".join(f"{task}={spent:.0f}" for task, spent in seconds.items()))
    print(f"pipeline seconds: {time.monotonic() - start:.0f}")
    s3_root = args.workdir.resolve() / "s3"
    print(f"report:      {s3_path(s3_root, outputs['report'].uri)}")
    print(f"model:       {s3_path(s3_root, outputs['model'].uri)}")


if __name__ == "__main__":
    main()
