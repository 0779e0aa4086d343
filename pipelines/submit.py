"""Submit the distillation pipeline to a Kubeflow Pipelines cluster: compile, upload, run, optionally wait.

    make submit RUN_CONFIG=run.yaml                       # = the command below with REGISTRY/TAG set
    KFP_HOST=https://kfp.example.com KFP_TOKEN=... python -m pipelines.submit --config run.yaml --wait
    python -m pipelines.submit --config run.yaml --set train_gpus=4 --experiment nightly --dry-run
    python -m pipelines.submit --config run.yaml --check    # validate only: no server is contacted
    python -m pipelines.submit --config run.yaml --check --print   # and print every value the run uses

What it does, in order:
1. compiles `pipelines.distill_pipeline` to build/distill_pipeline.yaml (image names come from the
   REGISTRY and TAG environment variables, as for `make build push`), or takes `--package`;
2. reads the run config: a YAML mapping of pipeline parameters, flat (`train_gpus: 4`, `train_lora_r: 8`)
   or grouped by stage, where a Config field is spelled as in the stage's YAML (`train: {gpus: 4,
   lora: {r: 8}, deepspeed: zero2}`; a field that is no parameter goes into `train_overrides`); unknown
   names are refused with the list of valid ones;
3. checks the run with each stage's own Config (every field's type and the cross-field rules), so a bad
   run fails here, before anything is uploaded or a GPU is requested; `--check` stops after this step;
4. uploads the pipeline if the cluster does not have it yet, then a pipeline version named after the git
   commit (reused when that commit was uploaded before);
5. creates a run in the experiment (made if missing) and prints its id;
6. with `--wait`, polls until the run ends and exits 0 only if it succeeded.

Connection: `--host` or KFP_HOST with a bearer token in KFP_TOKEN (`existing_token`, e.g. from
`kubectl create token` or an OIDC provider); with neither, kfp.Client uses in-cluster credentials (the
pod's service-account token) or the local kubeconfig.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.common.cli import parse_assignments
from components.common.config import deep_merge, did_you_mean, exposed_fields, set_dotted, to_dict
from components.common.errors import ConfigError, InputError
from components.common.logs import print_error, setup_logging
from components.common.plain_yaml import load_plain_yaml
from components.common.redact import redact_config
from components.common.secrets import optional_env
from components.train.multinode.kube import scheduling_labels
from pipelines.run_check import STAGE_CONFIGS, check_stage_configs

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
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
# The package `python -m components.<package>` runs, per stage prefix.
STAGE_PACKAGES = {
    "download": "download",
    "teacher": "teacher",
    "train": "train",
    "merge": "merge",
    "eval": "evaluate",
    "register": "register",
}


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


def compile_package(path: Path, train_labels: dict[str, str] | None = None) -> Path:
    """Compile the pipeline with the image names REGISTRY and TAG give when the components are first
    imported (the component decorators fix their images then), i.e. once per process; the one-pod train
    task carries `train_labels`."""
    from pipelines.distill_pipeline import compile_pipeline

    path.parent.mkdir(parents=True, exist_ok=True)
    compile_pipeline(str(path), train_labels)
    return path


def train_pod_labels(values: dict[str, Any]) -> dict[str, str]:
    """Kueue's labels for the run's train pod when it trains alone (train_nodes 1): its queue and priority.
    A multi-node run's training job gets them at run time instead."""
    if values.get("train_nodes", 1) != 1:
        return {}
    return scheduling_labels({}, values.get("train_queue_name", ""), values.get("train_priority_class", ""))


def compiled_train_labels(package: Path) -> dict[str, str]:
    """The pod labels the train task of a compiled pipeline carries."""
    documents = list(yaml.safe_load_all(package.read_text()))
    executors = documents[-1].get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {})
    train = executors.get("executors", {}).get("exec-train-student", {})
    return train.get("podMetadata", {}).get("labels", {})


def _root_parameters(package: Path) -> dict[str, dict[str, Any]]:
    try:
        spec = next(yaml.safe_load_all(package.read_text()))
    except FileNotFoundError:
        raise InputError(
            f"compiled pipeline {package} not found; run `make compile` or drop --package"
        ) from None
    return spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})


def pipeline_parameters(package: Path) -> dict[str, str]:
    """Parameter name -> KFP parameter type, read from the compiled pipeline's root inputs."""
    return {name: definition["parameterType"] for name, definition in _root_parameters(package).items()}


def pipeline_defaults(package: Path) -> dict[str, Any]:
    """Parameter name -> its default in the compiled pipeline (integers come back as floats there)."""
    defaults = {}
    for name, definition in _root_parameters(package).items():
        value = definition.get("defaultValue")
        if definition["parameterType"] == "NUMBER_INTEGER" and isinstance(value, float):
            value = int(value)
        defaults[name] = value
    return defaults


def flatten_run_config(config: dict[str, Any], valid: dict[str, str]) -> dict[str, Any]:
    """Turn `{train: {gpus: 4, lora: {r: 8}, deepspeed: zero2}, seed: 1}` into
    `{train_gpus: 4, train_lora_r: 8, train_overrides: {deepspeed: zero2}, seed: 1}`.

    Under a stage's key a Config field is spelled as in the stage's YAML (`lora: {r: 8}`), never as the
    flat parameter's tail (`lora_r`); a key that is itself a parameter name (e.g. `teacher_overrides`) is
    taken as is. A parameter given twice is refused, naming both spellings."""
    flat: dict[str, Any] = {}
    spelled: dict[str, str] = {}

    def put(name: str, value: Any, spelling: str) -> None:
        if name in flat:
            raise ConfigError(f"{spelled[name]} and {spelling} both set; give it once")
        flat[name], spelled[name] = value, spelling

    configs = STAGE_CONFIGS
    for key, value in config.items():
        if key in configs and key not in valid and isinstance(value, dict):
            for name, (inner, spelling) in _stage_group(key, configs[key], value, valid).items():
                if name.endswith("_overrides") and name in flat:
                    flat[name] = deep_merge(flat[name], inner)
                else:
                    put(name, inner, spelling)
        elif key.endswith("_overrides") and key in flat:
            flat[key] = deep_merge(value, flat[key])
        else:
            put(key, value, key)
    return flat


def _stage_group(
    stage: str, config: type, group: dict[str, Any], valid: dict[str, str]
) -> dict[str, tuple[Any, str]]:
    """Parameter name -> (value, how the run config spelled it) for the mapping under `stage:`."""
    exposed = {field.path: field for field in exposed_fields(config)}
    by_parameter = {field.parameter: field for field in exposed.values()}
    fields = {f.name for f in dataclasses.fields(config)}
    found: dict[str, tuple[Any, str]] = {}
    overrides: dict[str, Any] = {}

    def visit(path: str, value: Any) -> None:
        spelling = f"{stage}.{path}"
        if path in exposed:
            found[exposed[path].parameter] = (value, spelling)
        elif isinstance(value, dict) and any(p.startswith(f"{path}.") for p in exposed):
            for inner, inner_value in value.items():
                visit(f"{path}.{inner}", inner_value)
        elif f"{stage}_{path}" in by_parameter:
            field = by_parameter[f"{stage}_{path}"]
            raise ConfigError(
                f"{spelling}: write it as {stage}.{field.path}, as in the stage's YAML (or {field.parameter})"
            )
        elif "." not in path and f"{stage}_{path}" in valid:
            found[f"{stage}_{path}"] = (value, spelling)
        elif path.split(".")[0] in fields and f"{stage}_overrides" in valid:
            set_dotted(overrides, path, value)
        else:
            known = fields | {name[len(stage) + 1 :] for name in valid if name.startswith(f"{stage}_")}
            raise ConfigError(
                f"{spelling}: unknown field of the {stage} stage{did_you_mean(path, known)}; "
                f"`python -m components.{STAGE_PACKAGES[stage]} --help` lists them"
            )

    for key, value in group.items():
        visit(key, value)
    if overrides:
        found[f"{stage}_overrides"] = (overrides, f"{stage}_overrides")
    return found


def check_params(params: dict[str, Any], valid: dict[str, str], source: str) -> dict[str, Any]:
    """Refuse unknown names and values of the wrong type, naming the parameter and what is allowed."""
    unknown = sorted(set(params) - set(valid))
    if unknown:
        hints = "".join(did_you_mean(name, valid) for name in unknown)
        raise ConfigError(
            f"{source}: unknown pipeline parameter(s) {', '.join(unknown)}{hints}; valid parameters are: "
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
    """Parameters from the run-config file, then `--set name=value` (or `stage.field=value`) on top."""
    params: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = load_plain_yaml(path.read_text(), f"run config {path}") or {}
        except FileNotFoundError:
            raise InputError(f"run config {path} not found") from None
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: expected a mapping of pipeline parameters, got {type(loaded).__name__}"
            )
        params = check_params(flatten_run_config(loaded, valid), valid, str(path))
    # --set wins; within an `<stage>_overrides` mapping it changes only the fields it names, so
    # `--set teacher.fields.question=q` keeps the run file's other teacher overrides.
    for name, value in check_params(
        flatten_run_config(parse_assignments(assignments), valid), valid, "--set"
    ).items():
        merge = name.endswith("_overrides") and isinstance(params.get(name), dict)
        params[name] = deep_merge(params[name], value) if merge else value
    return params


def resolved_run(values: dict[str, Any], configs: dict[str, Any]) -> dict[str, Any]:
    """What a run will use, secrets redacted: every pipeline parameter (`values`, defaults included) and
    each stage's Config as its task builds it (artifact folders are the check's placeholders)."""
    return redact_config(
        {"parameters": values, "stages": {stage: to_dict(config) for stage, config in configs.items()}}
    )


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


def require_connection(host: str | None) -> None:
    """Refuse to go on when kfp.Client would have no server to reach: no host, no in-cluster service
    account and no kubeconfig (it would otherwise retry localhost:80 and end in a long traceback)."""
    in_cluster = Path(SERVICE_ACCOUNT_TOKEN).is_file() and optional_env("KUBERNETES_SERVICE_HOST")
    kubeconfig = Path(optional_env("KUBECONFIG") or Path.home() / ".kube" / "config")
    if not (host or in_cluster or kubeconfig.is_file()):
        raise ConfigError(
            "no KFP server to submit to: set KFP_HOST to the KFP API URL (or pass --host) and KFP_TOKEN to "
            "a bearer token (e.g. `kubectl create token`); `--check` validates the run without a server"
        )


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
    parser.add_argument("--dry-run", action="store_true", help="compile and check, print what would run")
    parser.add_argument("--check", action="store_true", help="check the run config only; contacts no server")
    parser.add_argument(
        "--print",
        action="store_true",
        help="with --check: print the resolved run as JSON (parameters and each stage's Config), secrets redacted",
    )
    parser.add_argument(
        "--skip-check",
        action="store_true",
        help="submit without checking the stage Configs here (for template files that exist only in the image)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, client=None) -> int:
    """Exit status: 0 submitted (or succeeded with --wait), 1 the run failed, 2 bad config or input,
    3 the wait timed out, 4 the KFP API refused a request. `client` replaces kfp.Client."""
    setup_logging()
    args = parse_args(argv)
    repo = Path(__file__).resolve().parents[1]
    try:
        if client is None and not (args.check or args.dry_run):
            require_connection(args.host)
        package = args.package or compile_package(repo / DEFAULT_PACKAGE)
        params = load_run_config(args.config, args.set, pipeline_parameters(package))
        labels = train_pod_labels({**pipeline_defaults(package), **params})
        if labels and not args.package:
            package = compile_package(repo / DEFAULT_PACKAGE, labels)
        elif labels and compiled_train_labels(package) != labels:
            raise ConfigError(
                "train_queue_name: the pipeline in --package does not label its train pod with this run's "
                f"Kueue queue and priority {labels} (pod labels are fixed when compiling); drop --package"
            )
        if args.print and (args.skip_check or not args.check):
            raise ConfigError("--print goes with --check (and without --skip-check)")
        if not args.skip_check:
            values = {**pipeline_defaults(package), **params}
            configs = check_stage_configs(values)
        if args.print:
            print(json.dumps(resolved_run(values, configs), indent=2, ensure_ascii=False, default=str))
            return 0
        if args.check:
            print(f"run config OK: {len(params)} parameter(s) set, every stage's Config checked")
            return 0
        submission = Submission(
            package=package,
            params=params,
            pipeline_name=args.pipeline_name,
            # A version per queue and priority: its train pod's labels are part of the compiled pipeline.
            version_name="-".join([args.version or git_version_name(repo), *labels.values()]),
            experiment=args.experiment,
            run_name=args.run_name,
            namespace=args.namespace,
            service_account=args.service_account,
            wait=args.wait,
            timeout_s=args.timeout,
            poll_s=args.poll,
        )
    except (ConfigError, InputError) as error:
        print_error(str(error))
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
        print_error(f"run {outcome.run_id} did not finish within --timeout {args.timeout}s")
    elif outcome.state is not None:
        print(f"run {outcome.run_id} finished: {outcome.state}")
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
