"""DeepSpeed ZeRO on a CPU: the same engine as on GPUs, over gloo, once DeepSpeed's shared-memory comm op
is built.

    python -m components.train.deepspeed_cpu      # build the op ahead of time (an image or CI step)

`deepspeed.initialize` on a CPU JIT-compiles the `deepspeed_shm_comm` op with a C++ compiler and ninja
(minutes on 2 cores, then cached in ~/.cache/torch_extensions, or $TORCH_EXTENSIONS_DIR). Left to itself
that build fails deep inside torch without its tools, and waits forever on the lock file of a build that
was killed half way. `prepare()` runs before any model loads and says either in one line; the first
rank on a machine builds in a child process bounded by BUILD_BOUND_S, while the others wait for it in
torch's own lock, so a stuck build ends the whole run (torchrun stops every rank when one fails).

torch's JIT build keys its cache on the ninja that wrote it: a run with another ninja on PATH (the
system's against the venv's) builds again.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from components.common.errors import ConfigError

log = logging.getLogger(__name__)

OP = "deepspeed_shm_comm"
# A first build takes about 3 minutes on 2 busy cores; past this it is stuck, or waiting on a dead lock.
BUILD_BOUND_S = 900


def build_dir() -> Path:
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(OP, verbose=False))


def missing_tools() -> list[str]:
    """The build tools torch's JIT build calls that are not on PATH."""
    compiler = os.environ.get("CXX", "c++")
    return [tool for tool in (compiler, "ninja") if shutil.which(tool) is None]


def check_tools(stage: str) -> None:
    missing = missing_tools()
    if missing:
        raise ConfigError(
            f"deepspeed: {stage!r} on a CPU builds DeepSpeed's {OP} op with a C++ compiler and ninja, and "
            f"{' and '.join(missing)} is not on PATH; install them (apt-get install g++ ninja-build) or use "
            "deepspeed: none"
        )


def check_lock(lock: Path, bound_s: float) -> None:
    """A lock older than any build can take was left by a killed one: nothing will ever remove it."""
    if lock.exists() and time.time() - lock.stat().st_mtime > bound_s:
        raise ConfigError(
            f"deepspeed: {lock} is left by a killed build of DeepSpeed's {OP} op (older than "
            f"{bound_s:.0f} s) and every run would wait on it; delete it and run again"
        )


def build(bound_s: float = BUILD_BOUND_S) -> None:
    """Build (or load from the cache) the op in a child process, killed after `bound_s` seconds."""
    lock = build_dir() / "lock"
    lock_was_there = lock.exists()
    command = [sys.executable, "-m", "components.train.deepspeed_cpu"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    started = time.monotonic()
    try:
        completed = subprocess.run(command, env=env, timeout=bound_s, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        if not lock_was_there:  # the killed child's own lock: left, it would block every later run
            lock.unlink(missing_ok=True)
        raise ConfigError(
            f"deepspeed: DeepSpeed's {OP} op did not build within {bound_s:.0f} s"
            + (
                f"; it waited on {lock}, left by another build: if none is running, delete it"
                if lock_was_there
                else f"; build it ahead with `python -m {__name__}`, or use deepspeed: none"
            )
        ) from None
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"deepspeed: building DeepSpeed's {OP} op failed: {last}")
    log.info("DeepSpeed's %s op ready in %.0f s", OP, time.monotonic() - started)


def prepare(stage: str) -> None:
    """Before `deepspeed.initialize` on a CPU: the build tools are there, no dead lock blocks the op's
    build, and the first rank of this machine has built it (or found it cached) within the bound."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    check_tools(stage)
    check_lock(build_dir() / "lock", BUILD_BOUND_S)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        build(BUILD_BOUND_S)


def load() -> None:
    from deepspeed.accelerator import get_accelerator

    get_accelerator().create_op_builder("ShareMemCommBuilder").load()


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    load()
