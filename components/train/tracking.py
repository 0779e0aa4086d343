"""Where training metrics go: TensorBoard always (synced live to the store), plus optional trackers.

TensorBoard event files are written to `tensorboard_dir` and, when a store is configured, copied to
`runs/<run_id>/train/tensorboard/` at most every `sync_seconds` while training runs, so that

    tensorboard --logdir s3://bucket/prefix/runs/<run_id>/train/tensorboard

shows the run live on the cluster. Extra trackers (`report_to: [wandb, mlflow, swanlab]`) get the same
scalars when their package is installed (wandb and swanlab: the `trackers` extra; their keys come from
their own environment variables, WANDB_API_KEY / SWANLAB_API_KEY, or WANDB_MODE=offline /
SWANLAB_MODE=local); asking for one that is not installed fails before the models are loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import time
from pathlib import Path

from components.common.errors import ConfigError
from components.common.store import ArtifactStore

log = logging.getLogger(__name__)

TRACKER_PACKAGES = {"wandb": "wandb", "mlflow": "mlflow", "swanlab": "swanlab"}


class LiveSync:
    """Copies new or grown files of a local folder to a store prefix."""

    def __init__(self, local_dir: Path, store: ArtifactStore | None, every_seconds: float):
        self.local_dir = Path(local_dir)
        self.store = store
        self.every_seconds = every_seconds
        self._sizes: dict[str, int] = {}
        self._last = 0.0

    def restore(self) -> None:
        """Bring earlier attempts' event files back, so the artifact holds the whole history."""
        if self.store is not None and self.store.list(""):
            self.store.download_dir("", self.local_dir)
            for path in self.local_dir.rglob("*"):
                if path.is_file():
                    self._sizes[path.relative_to(self.local_dir).as_posix()] = path.stat().st_size

    def maybe_sync(self, force: bool = False) -> None:
        if self.store is None or (not force and time.monotonic() - self._last < self.every_seconds):
            return
        self._last = time.monotonic()
        for path in sorted(self.local_dir.rglob("*")):
            if not path.is_file():
                continue
            rel = path.relative_to(self.local_dir).as_posix()
            size = path.stat().st_size
            if self._sizes.get(rel) != size:
                self.store.upload_file(path, rel)
                self._sizes[rel] = size


class Trackers:
    """TensorBoard plus the trackers named in `report_to`, all fed the same scalars."""

    def __init__(
        self,
        tensorboard_dir: str,
        store: ArtifactStore | None,
        report_to: list[str],
        run_name: str,
        config: dict,
        resume_step: int = 0,
        sync_seconds: float = 30.0,
    ):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(tensorboard_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sync = LiveSync(self.dir, store, sync_seconds)
        if resume_step:
            self.sync.restore()
        # purge_step hides points an interrupted attempt logged after its last checkpoint.
        self.writer = SummaryWriter(str(self.dir), purge_step=resume_step or None)
        self.extra = [open_tracker(name, run_name, config) for name in report_to]

    def log(self, scalars: dict[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        for tracker in self.extra:
            tracker(scalars, step)
        self.writer.flush()
        self.sync.maybe_sync()

    def text(self, tag: str, markdown: str, step: int) -> None:
        """A Markdown text (TensorBoard's TEXT tab), e.g. teacher-vs-student samples."""
        self.writer.add_text(tag, markdown, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        self.sync.maybe_sync(force=True)


def check_report_to(report_to: list[str]) -> None:
    for name in report_to:
        if name not in TRACKER_PACKAGES:
            raise ConfigError(
                f"report_to: unknown tracker {name!r}; choose from {', '.join(TRACKER_PACKAGES)}"
            )
        if importlib.util.find_spec(TRACKER_PACKAGES[name]) is None:
            raise ConfigError(
                f"report_to: {name!r} is not installed in this image; install it (pip install {name}, or the "
                "project's extra: pip install 'kfp-distill[trackers]') or remove it (TensorBoard is always written)"
            )


def open_tracker(name: str, run_name: str, config: dict):
    """A function (scalars, step) -> None that reports to tracker `name`."""
    module = importlib.import_module(TRACKER_PACKAGES[name])
    if name == "wandb":
        run = module.init(name=run_name, config=config)
        return lambda scalars, step: run.log(scalars, step=step)
    if name == "swanlab":
        run = module.init(experiment_name=run_name, config=config)
        return lambda scalars, step: run.log(scalars, step=step)
    module.start_run(run_name=run_name)
    module.log_params({k: str(v)[:500] for k, v in config.items()})
    return lambda scalars, step: module.log_metrics(
        {k.replace("/", "_"): v for k, v in scalars.items()}, step
    )
