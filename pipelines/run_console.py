"""What `run_local` shows on the terminal while the pipeline runs: by default one line per task start and
end and the stages' progress lines (with their ETA) and errors; everything, with `--verbose`.

kfp.local prints each task's inputs as JSON and streams every line of the task's subprocess to stdout;
all of it still goes to the run's log file (<workdir>/run.log), so nothing is lost, only not shown:

    [05:13:06] check-run started
    [05:13:07] check-run done (1s)
    [05:13:12]   download: warm-up step 40/400 loss 2.1301 eta 0:03:12
"""

from __future__ import annotations

import io
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import TextIO

ANSI = re.compile(r"\x1b\[[0-9;]*m")
TASK_STARTED = re.compile(r"Executing task '([\w-]+)'")
TASK_FINISHED = re.compile(r"Task '([\w-]+)' finished with status (\w+)")
# A stage's own log line: "2026-12-07 05:13:07,299 INFO components.teacher: <message>".
STAGE_LINE = re.compile(r"^\s*\S+ \S+ (INFO|WARNING) (components\.[\w.]+|pipelines\.[\w.]+): (.*)$")
PROGRESS = re.compile(r"\beta\b", re.IGNORECASE)
# kfp.local warns, once per task, of the cluster settings (display names, CPU and memory requests) it
# ignores when running on this machine: true and harmless here.
HARMLESS_WARNINGS = (r"Task '.*': settings \[.*\] have no effect in the current local runner",)


class Console(io.TextIOBase):
    """A stdout that writes everything to `log` and shows on `shown` what `summarize` keeps."""

    def __init__(self, shown: TextIO, log: TextIO, verbose: bool):
        self.shown, self.log, self.verbose = shown, log, verbose
        self.pending = ""
        self.started: dict[str, float] = {}
        self.last_error = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.show(line)
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.shown.flush()

    def show(self, line: str) -> None:
        plain = ANSI.sub("", line)
        if "error: " in plain:
            self.last_error = plain[plain.index("error: ") :]
        shown = line if self.verbose else self.summarize(plain)
        if shown is not None:
            self.shown.write(shown + "\n")
            self.shown.flush()

    def summarize(self, line: str) -> str | None:
        """The line to show for `line`, or None to keep it in the log only."""
        clock = time.strftime("%H:%M:%S")
        if started := TASK_STARTED.search(line):
            self.started[started[1]] = time.monotonic()
            return f"[{clock}] {started[1]} started"
        if finished := TASK_FINISHED.search(line):
            seconds = time.monotonic() - self.started.get(finished[1], time.monotonic())
            outcome = "done" if finished[2] == "SUCCESS" else "failed"
            return f"[{clock}] {finished[1]} {outcome} ({seconds:.0f}s)"
        # A task's error is not shown here: `run_local` ends with it, on one line (last_error).
        if (stage := STAGE_LINE.match(line)) and (stage[1] == "WARNING" or PROGRESS.search(stage[3])):
            return f"[{clock}]   {stage[3]}"
        return None


@contextmanager
def console(log_path: Path, verbose: bool) -> Iterator[Console]:
    """Send stdout through a Console for the duration; the harmless warnings are hidden unless verbose."""
    import sys

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log, warnings.catch_warnings():
        if not verbose:
            for message in HARMLESS_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
        shown = Console(sys.stdout, log, verbose)
        with redirect_stdout(shown):
            yield shown
