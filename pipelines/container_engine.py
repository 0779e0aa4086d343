"""Build, push and run the stage images with whichever container engine this machine has.

    python -m pipelines.container_engine build [STAGE ...]       # = make build
    python -m pipelines.container_engine build --variant cpu --base-image localhost/kfp-distill-base:bookworm \
        --wheels /opt/wheels                                     # CPU images from a stand-in base (CI)
    python -m pipelines.container_engine push [STAGE ...]        # = make push
    python -m pipelines.container_engine build --dry-run         # print the engine commands only
    ENGINE=buildah python -m pipelines.container_engine build    # choose the engine

The engine is docker (with BuildKit) where its daemon answers, else podman, else buildah; ENGINE= chooses.
buildah runs unprivileged with STORAGE_DRIVER=vfs and BUILDAH_ISOLATION=chroot, which it gets unless
the environment sets others. Image names come from pipelines/images.py (REGISTRY, TAG).

An image whose build inputs (its Dockerfile, the build arguments and every file the build context
admits) hash to the `io.kfp-distill.inputs` label of the image already under its name is reused,
not rebuilt; `--rebuild` builds anyway.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.images import STAGES, image_for

REPO = Path(__file__).resolve().parents[1]
ENGINES = ("docker", "podman", "buildah")
INPUTS_LABEL = "io.kfp-distill.inputs"
# The builds of the CPU variant: torch's CPU build, no DeepSpeed ops, no vLLM (its wheels are CUDA
# builds), the base given for every stage.
CPU_BUILD_ARGS = {
    "PYTHON": "python3",
    "TORCH": "torch==2.13.0+cpu",
    "TORCH_INDEX": "https://download.pytorch.org/whl/cpu",
    "DS_PREBUILD": "0",
    "VLLM": "0",
}
BUILDAH_DEFAULTS = {"STORAGE_DRIVER": "vfs", "BUILDAH_ISOLATION": "chroot"}


def detect_engine(environ: dict[str, str] | None = None) -> str:
    """ENGINE if set, else the first of docker, podman, buildah that is installed and works."""
    environ = os.environ if environ is None else environ
    chosen = environ.get("ENGINE", "")
    if chosen:
        if chosen not in ENGINES:
            raise SystemExit(f"ENGINE={chosen!r} is not one of {', '.join(ENGINES)}")
        return chosen
    for name in ENGINES:
        if shutil.which(name) and _answers(name):
            return name
    raise SystemExit(
        "no container engine works here: start the Docker daemon, or install podman or buildah "
        "(apt-get install buildah), or name one with ENGINE="
    )


def _answers(name: str) -> bool:
    """Whether the engine can serve a build: docker and podman need their service, buildah only itself."""
    probe = [name, "version"] if name == "buildah" else [name, "info"]
    try:
        done = subprocess.run(probe, capture_output=True, timeout=30, env=engine_environ(name))
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def engine_environ(engine: str) -> dict[str, str]:
    environ = dict(os.environ)
    if engine == "buildah":
        for key, value in BUILDAH_DEFAULTS.items():
            environ.setdefault(key, value)
    if engine == "docker":
        environ.setdefault("DOCKER_BUILDKIT", "1")
    return environ


def context_files(repo: Path = REPO) -> list[Path]:
    """The files .dockerignore admits into the build context, sorted: what a build can see."""
    rules = [
        line.strip()
        for line in (repo / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # Only what a `!` rule names can be admitted after the leading `**`; walk just those tops.
    tops = {rule.lstrip("!").split("/")[0] for rule in rules if rule.startswith("!")}
    candidates = [path for top in sorted(tops) for path in _files_under(repo / top)]
    admitted = []
    for path in sorted(candidates):
        relative = path.relative_to(repo).as_posix()
        keep = True
        for rule in rules:
            if _matches(relative, rule.lstrip("!")):
                keep = rule.startswith("!")
        if keep:
            admitted.append(path)
    return admitted


def _files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []


def _matches(relative: str, pattern: str) -> bool:
    """Docker's rule: a pattern that matches a folder matches everything under it."""
    parts = relative.split("/")
    return any(fnmatch.fnmatch("/".join(parts[:end]), pattern) for end in range(1, len(parts) + 1))


def inputs_hash(stage: str, build_args: dict[str, str], repo: Path = REPO) -> str:
    """A digest of everything a build of `stage` depends on in this repository."""
    digest = hashlib.sha256()
    digest.update((repo / "docker" / f"{stage}.Dockerfile").read_bytes())
    digest.update(json.dumps(sorted(build_args.items())).encode())
    for path in context_files(repo):
        digest.update(path.relative_to(repo).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:32]


@dataclass
class BuildSettings:
    """How the images are built: the variant, the bases and the wheels it takes them from."""

    variant: str = (
        "cuda"  # or "cpu": torch's CPU build, no DeepSpeed ops, no vLLM, BASE_IMAGE for every stage
    )
    base_image: str = ""  # default: each Dockerfile's pinned base
    wheels: str = ""  # a folder of wheels mounted at /wheels (podman, buildah)
    platform: str = ""
    version: str = "dev"
    build_args: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.variant not in ("cuda", "cpu"):
            raise SystemExit(f"--variant {self.variant!r}: choose cuda or cpu")
        if self.wheels and not Path(self.wheels).is_dir():
            raise SystemExit(f"--wheels {self.wheels}: no such folder; name the folder holding the wheels")

    def args_for(self) -> dict[str, str]:
        """The build arguments that decide the image's content (VERSION only labels it)."""
        args = dict(CPU_BUILD_ARGS) if self.variant == "cpu" else {}
        if self.base_image:
            args["BASE_IMAGE"] = self.base_image
            if self.variant == "cpu":
                args["BUILD_BASE_IMAGE"] = self.base_image
        if self.wheels:
            # The folder holds torch's CPU build; its index may be out of reach (air-gapped, CI).
            args["TORCH_INDEX"] = ""
        args.update(self.build_args)
        return args


def build_command(engine: str, stage: str, image: str, settings: BuildSettings, label: str) -> list[str]:
    command = [engine, "build"]
    if engine in ("podman", "buildah"):
        command.append("--layers")
    if settings.platform:
        command += ["--platform", settings.platform]
    if settings.wheels:
        if engine == "docker":
            raise SystemExit(
                "docker build cannot mount a wheel folder: use podman or buildah, or TORCH_INDEX"
            )
        command += ["-v", f"{Path(settings.wheels).resolve()}:/wheels:ro"]
    command += ["--file", f"docker/{stage}.Dockerfile"]
    for key, value in {**settings.args_for(), "VERSION": settings.version}.items():
        command += ["--build-arg", f"{key}={value}"]
    command += ["--label", f"{INPUTS_LABEL}={label}", "--tag", image, "."]
    return command


def image_label(engine: str, image: str, key: str = INPUTS_LABEL) -> str | None:
    """The label `key` of the local image `image`, or None when there is no such image."""
    if engine == "buildah":
        command = ["buildah", "inspect", "--type", "image", image]
    else:
        command = [engine, "image", "inspect", image]
    done = subprocess.run(command, capture_output=True, text=True, env=engine_environ(engine))
    if done.returncode != 0:
        return None
    data = json.loads(done.stdout)
    if engine == "buildah":
        labels = data.get("OCIv1", {}).get("config", {}).get("Labels") or {}
    else:
        labels = (data[0].get("Config") or {}).get("Labels") or {}
    return labels.get(key, "")


def build(
    engine: str, stages: Sequence[str], settings: BuildSettings, rebuild: bool = False, dry_run: bool = False
) -> dict[str, float]:
    """Build (or reuse) each stage image; returns {stage: seconds spent building, 0.0 when reused}."""
    spent = {}
    for stage in stages:
        image = image_for(stage)
        label = inputs_hash(stage, settings.args_for())
        if dry_run:
            print(" ".join(build_command(engine, stage, image, settings, label)))
            continue
        if not rebuild and image_label(engine, image) == label:
            print(f"{image}: up to date (inputs {label})", flush=True)
            spent[stage] = 0.0
            continue
        command = build_command(engine, stage, image, settings, label)
        print("+ " + " ".join(command), flush=True)
        start = time.monotonic()
        subprocess.run(command, cwd=REPO, check=True, env=engine_environ(engine))
        spent[stage] = time.monotonic() - start
        print(f"{image}: built in {spent[stage]:.0f} s", flush=True)
    return spent


def push(engine: str, stages: Sequence[str], dry_run: bool = False) -> None:
    for stage in stages:
        command = [engine, "push", image_for(stage)]
        print(" ".join(command), flush=True)
        if not dry_run:
            subprocess.run(command, check=True, env=engine_environ(engine))


def run_in_image(
    engine: str,
    image: str,
    argv: Sequence[str],
    environment: dict[str, str] | None = None,
    mounts: dict[Path, str] | None = None,
    user: str = "",
    capture: bool = False,
) -> subprocess.CompletedProcess:
    """Run argv in a fresh container of `image` on the host's network, as `user` (default: the image's).

    Raises CalledProcessError when the command fails; with `capture`, its stdout and stderr are kept."""
    options = [flag for key, value in (environment or {}).items() for flag in ("--env", f"{key}={value}")]
    options += [flag for host, inside in (mounts or {}).items() for flag in ("-v", f"{host}:{inside}")]
    if user:
        options += ["--user", user]
    output = {"capture_output": True, "text": True} if capture else {}
    engine_env = engine_environ(engine)
    if engine != "buildah":
        command = [engine, "run", "--rm", "--network", "host", *options, image, *argv]
        return subprocess.run(command, check=True, env=engine_env, **output)
    # buildah runs a command in a working container; chroot isolation shares the host's network.
    created = subprocess.run(
        ["buildah", "from", "--pull-never", image], capture_output=True, text=True, check=True, env=engine_env
    )
    working = created.stdout.strip().splitlines()[-1]
    try:
        command = ["buildah", "run", *options, working, "--", *argv]
        return subprocess.run(command, check=True, env=engine_env, **output)
    finally:
        subprocess.run(["buildah", "rm", working], capture_output=True, env=engine_env)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.container_engine", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("action", choices=("build", "push", "detect"))
    parser.add_argument("stages", nargs="*", metavar="STAGE", help=f"default: all of {', '.join(STAGES)}")
    parser.add_argument("--variant", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--base-image", default="", help="BASE_IMAGE for every stage (a mirror, a stand-in)")
    parser.add_argument(
        "--wheels", default="", help="a folder of wheels pip takes first (mounted at /wheels)"
    )
    parser.add_argument("--platform", default="")
    parser.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--rebuild", action="store_true", help="build even where the image is up to date")
    parser.add_argument("--dry-run", action="store_true", help="print the engine commands, run nothing")
    args = parser.parse_intermixed_args(argv)
    unknown = sorted(set(args.stages) - set(STAGES))
    if unknown:
        raise SystemExit(f"unknown stage {unknown[0]!r}; stages are {', '.join(STAGES)}")
    engine = detect_engine()
    if args.action == "detect":
        print(engine)
        return
    stages = args.stages or list(STAGES)
    if args.action == "push":
        push(engine, stages, dry_run=args.dry_run)
        return
    settings = BuildSettings(
        variant=args.variant,
        base_image=args.base_image,
        wheels=args.wheels,
        platform=args.platform,
        version=os.environ.get("TAG") or "dev",
        build_args=dict(pair.split("=", 1) for pair in args.build_arg),
    )
    build(engine, stages, settings, rebuild=args.rebuild, dry_run=args.dry_run)


if __name__ == "__main__":
    main(sys.argv[1:])
