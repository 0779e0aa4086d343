"""Submit the distillation pipeline to a Kubeflow Pipelines cluster: compile, upload, run, optionally wait.

    make submit RUN_CONFIG=run.yaml                       # = the command below with REGISTRY/TAG set
    KFP_HOST=https://kfp.example.com KFP_TOKEN=... python -m pipelines.submit --config run.yaml --wait
    python -m pipelines.submit --config run.yaml --set train_gpus=4 --experiment nightly --dry-run

What it does, in order:
1. compiles `pipelines.distill_pipeline` to build/distill_pipeline.yaml (image names come from the
   REGISTRY and TAG environment variables, as for `make build push`), or takes `--package`;
2. reads the run config: a YAML mapping of pipeline parameters, flat (`train_gpus: 4`) or grouped by the
   stage prefix (`train: {gpus: 4}`); unknown names are refused with the list of valid ones;
3. uploads the pipeline if the cluster does not have it yet, then a pipeline version named after the git
   commit (reused when that commit was uploaded before);
4. creates a run in the experiment (made if missing) and prints its id;
5. with `--wait`, polls until the run ends and exits 0 only if it succeeded.

Connection: `--host` or KFP_HOST with a bearer token in KFP_TOKEN (`existing_token`, e.g. from
`kubectl create token` or an OIDC provider); with neither, kfp.Client uses in-cluster credentials (the
pod's service-account token) or the local kubeconfig.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.common.cli import parse_assignments
from components.common.errors import ConfigError, InputError
from components.common.logs import setup_logging
from components.common.secrets import optional_env

PIPELINE_NAME = "llm-distillation"
# Compiled with this run's REGISTRY/TAG into the ignored build/ folder: the committed
# pipelines/distill_pipeline.yaml (default image names) stays untouched, so the tree stays clean.
DEFAULT_PACKAGE = "build/distill_pipeline.yaml"
# Python types a run-config value may have, per KFP parameter type in the compiled spec.
PARAMETER_TYPES: dict[str, tuple[type, ...]] = {
    "STRING": (str,),
    "NUMBER_INTEGER": (int,),
    "NUMBER_DOUBLE": (int, float),
    "BOOLEAN": (bool,),
    "STRUCT": (dict,),
    "LIST": (list,),
}
FINISHED_OK = {"SUCCEEDED", "SKIPPED"}
TIMEOUT = "TIMEOUT"


@dataclass
class Submission:
    """Everything one submission needs; `main` fills it from the command line."""

    package: Path
    params: dict[str, Any] = field(default_factory=dict)
    pipeline_name: str = PIPELINE_NAME
    version_name: str = ""
    experiment: str = "distillation"
    run_name: str = ""
    namespace: str | None = None
    service_account: str | None = None
    wait: bool = False
    timeout_s: int = 7 * 24 * 3600
    poll_s: float = 30.0


@dataclass
class Outcome:
    run_id: str
    pipeline_id: str
    version_id: str
    state: str | None = None  # set when waited for; TIMEOUT when --timeout passed first

    @property
    def exit_code(self) -> int:
        if self.state == TIMEOUT:
            return 3
        return 0 if self.state is None or self.state.upper() in FINISHED_OK else 1


def compile_package(path: Path) -> Path:
    """Compile the pipeline with the image names REGISTRY and TAG give when the components are first
    imported (the component decorators fix their images then), i.e. once per process."""
    from pipelines.distill_pipeline import compile_pipeline

    path.parent.mkdir(parents=True, exist_ok=True)
    compile_pipeline(str(path))
    return path


def pipeline_parameters(package: Path) -> dict[str, str]:
    """Parameter name -> KFP parameter type, read from the compiled pipeline's root inputs."""
    try:
        spec = next(yaml.safe_load_all(package.read_text()))
    except FileNotFoundError:
        raise InputError(
            f"compiled pipeline {package} not found; run `make compile` or drop --package"
        ) from None
    inputs = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    return {name: definition["parameterType"] for name, definition in inputs.items()}


def flatten_run_config(config: dict[str, Any], valid: dict[str, str]) -> dict[str, Any]:
    """Turn `{train: {gpus: 4}, seed: 1}` into `{train_gpus: 4, seed: 1}`; a key that is itself a
    parameter name (e.g. `teacher_overrides`) is taken as is, even when its value is a mapping."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if key not in valid and isinstance(value, dict) and any(name.startswith(f"{key}_") for name in valid):
            for inner, inner_value in value.items():
                flat[f"{key}_{inner}"] = inner_value
        else:
            flat[key] = value
    return flat


def check_params(params: dict[str, Any], valid: dict[str, str], source: str) -> dict[str, Any]:
    """Refuse unknown names and values of the wrong type, naming the parameter and what is allowed."""
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(
            f"{source}: unknown pipeline parameter(s) {', '.join(unknown)}; valid parameters are: "
            f"{', '.join(sorted(valid))}"
        )
    for name, value in params.items():
        allowed = PARAMETER_TYPES.get(valid[name], (object,))
        wrong_bool = isinstance(value, bool) and bool not in allowed
        if value is not None and (wrong_bool or not isinstance(value, allowed)):
            raise ConfigError(
                f"{source}: parameter {name} must be {valid[name].lower()}, got {type(value).__name__} {value!r}"
            )
    return {name: value for name, value in params.items() if value is not None}


def load_run_config(path: Path | None, assignments: list[str], valid: dict[str, str]) -> dict[str, Any]:
    """Parameters from the run-config file, then `--set name=value` on top."""
    params: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise InputError(f"run config {path} not found") from None
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: expected a mapping of pipeline parameters, got {type(loaded).__name__}"
            )
        params = check_params(flatten_run_config(loaded, valid), valid, str(path))
    params.update(check_params(flatten_run_config(parse_assignments(assignments), valid), valid, "--set"))
    return params


def git_version_name(repo: Path) -> str:
    """The short commit sha, marked `-dirty-<UTC time>` when the tree has uncommitted changes (the
    uploaded YAML then differs from the commit, so it must not take the commit's version name)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, check=True, capture_output=True, text=True
        ).stdout.strip()

    try:
        sha = git("rev-parse", "--short=12", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        raise ConfigError("not a git checkout: pass --version to name the pipeline version") from None
    if dirty:
        return f"{sha}-dirty-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}"
    return sha


def _name_filter(name: str) -> str:
    predicate = {"operation": "EQUALS", "key": "display_name", "stringValue": name}
    return json.dumps({"predicates": [predicate]})


def ensure_version(client, submission: Submission) -> tuple[str, str]:
    """(pipeline_id, version_id) of `version_name`, uploading the pipeline and the version as needed."""
    package = str(submission.package)
    pipeline_id = client.get_pipeline_id(submission.pipeline_name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(
            package, pipeline_name=submission.pipeline_name, namespace=submission.namespace
        )
        pipeline_id = pipeline.pipeline_id
    existing = client.list_pipeline_versions(pipeline_id, filter=_name_filter(submission.version_name))
    if existing.pipeline_versions:
        return pipeline_id, existing.pipeline_versions[0].pipeline_version_id
    version = client.upload_pipeline_version(package, submission.version_name, pipeline_id=pipeline_id)
    return pipeline_id, version.pipeline_version_id


def submit(client, submission: Submission) -> Outcome:
    """Upload (pipeline, version), create the run, and wait for it if asked."""
    pipeline_id, version_id = ensure_version(client, submission)
    experiment = client.create_experiment(submission.experiment, namespace=submission.namespace)
    run = client.run_pipeline(
        experiment_id=experiment.experiment_id,
        job_name=submission.run_name or f"{submission.pipeline_name}-{submission.version_name}",
        params=submission.params,
        pipeline_id=pipeline_id,
        version_id=version_id,
        service_account=submission.service_account,
    )
    outcome = Outcome(run_id=run.run_id, pipeline_id=pipeline_id, version_id=version_id)
    print(
        f"run {run.run_id} created: pipeline {pipeline_id} version {submission.version_name} ({version_id})"
    )
    if submission.wait:
        try:
            finished = client.wait_for_run_completion(run.run_id, submission.timeout_s, submission.poll_s)
            outcome.state = str(finished.state)
        except TimeoutError:
            outcome.state = TIMEOUT
    return outcome


def make_client(host: str | None, namespace: str | None):
    """kfp.Client for `host` with KFP_TOKEN as bearer token; in-cluster credentials when both are unset."""
    import kfp

    token = optional_env("KFP_TOKEN")
    return kfp.Client(host=host or None, existing_token=token, namespace=namespace or "kubeflow")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipelines.submit", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, help="run config: YAML mapping of pipeline parameters")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="one parameter")
    parser.add_argument("--host", default=optional_env("KFP_HOST"), help="KFP API URL (default: $KFP_HOST)")
    parser.add_argument("--namespace", default=optional_env("KFP_NAMESPACE"), help="profile namespace")
    parser.add_argument("--experiment", default="distillation")
    parser.add_argument("--run-name", default="", help="default: <pipeline>-<version>")
    parser.add_argument("--pipeline-name", default=PIPELINE_NAME)
    parser.add_argument("--version", default="", help="pipeline version name (default: the git commit)")
    parser.add_argument("--package", type=Path, help="submit this compiled YAML instead of compiling")
    parser.add_argument("--service-account", help="Kubernetes service account the run's pods use")
    parser.add_argument("--wait", action="store_true", help="wait for the run; exit 1 unless it succeeds")
    parser.add_argument("--timeout", type=int, default=7 * 24 * 3600, help="seconds to wait (with --wait)")
    parser.add_argument("--poll", type=float, default=30.0, help="seconds between status checks")
    parser.add_argument("--dry-run", action="store_true", help="compile and check parameters only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, client=None) -> int:
    """Exit status: 0 submitted (or succeeded with --wait), 1 the run failed, 2 bad config or input,
    3 the wait timed out, 4 the KFP API refused a request. `client` replaces kfp.Client."""
    setup_logging()
    args = parse_args(argv)
    repo = Path(__file__).resolve().parents[1]
    try:
        package = args.package or compile_package(repo / DEFAULT_PACKAGE)
        params = load_run_config(args.config, args.set, pipeline_parameters(package))
        submission = Submission(
            package=package,
            params=params,
            pipeline_name=args.pipeline_name,
            version_name=args.version or git_version_name(repo),
            experiment=args.experiment,
            run_name=args.run_name,
            namespace=args.namespace,
            service_account=args.service_account,
            wait=args.wait,
            timeout_s=args.timeout,
            poll_s=args.poll,
        )
    except (ConfigError, InputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(yaml.safe_dump({"package": str(package), "version": submission.version_name, "params": params}))
        return 0
    from kfp_server_api import ApiException

    try:
        outcome = submit(client or make_client(args.host, args.namespace), submission)
    except ApiException as error:
        print(
            f"error: the KFP API answered {error.status} {error.reason}: {error.body!s:.500}; "
            "check --host/KFP_HOST, the KFP_TOKEN bearer token and --namespace",
            file=sys.stderr,
        )
        return 4
    if outcome.state == TIMEOUT:
        print(f"error: run {outcome.run_id} did not finish within --timeout {args.timeout}s", file=sys.stderr)
    elif outcome.state is not None:
        print(f"run {outcome.run_id} finished: {outcome.state}")
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
