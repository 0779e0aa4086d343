"""Progress as people and the KFP UI see it: a tqdm bar (rate, ETA, cost) and a log line every so often.

The KFP UI shows a task's log but renders no progress bar, so the log line stands on its own:

    teacher: 1200/5000 prompts (24.0%), 8.10/s, ETA 469s, 1290 requests, tokens in/out 51234/402311,
    cost 0.9100, retries 90 (429 70, 500 20), failed 2 (refused 2),
    dropped 0

Retries and prompts given up are counted by cause as they happen, so a struggling teacher shows at once.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from components.teacher.journal import Entry
from components.teacher.money import Budget
from components.teacher.worker_pool import Tally

log = logging.getLogger("components.teacher")


class Progress:
    def __init__(self, total: int, budget: Budget, tally: Tally, every_s: float, bar: bool | None):
        self.total = total
        self.budget = budget
        self.tally = tally
        self.every_s = every_s
        self.done = 0
        self.start = time.monotonic()
        # None: draw the bar only on a terminal; in a pod its carriage returns would clutter the log.
        self.bar = None
        if total and (bar if bar is not None else sys.stderr.isatty()):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="teacher", unit="prompt", mininterval=1.0)

    def update(self, entry: Entry) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(
                cost=f"{self.budget.spent.cost:.4f}",
                requests=self.budget.spent.requests,
                retries=self.tally.retries,
                refresh=False,
            )

    def log_line(self) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate else float("inf")
        tally = self.tally
        log.info(
            "teacher: %d/%d prompts (%.1f%%), %.2f/s, ETA %.0fs, %d requests, tokens in/out %d/%d, cost %.4f, "
            "retries %s, failed %s, dropped %s",
            self.done,
            self.total,
            100 * self.done / max(self.total, 1),
            rate,
            eta,
            self.budget.spent.requests,
            self.budget.spent.prompt_tokens,
            self.budget.spent.completion_tokens,
            self.budget.spent.cost,
            _by_cause(tally.retry_causes),
            _by_cause(tally.lost_causes, "failed: "),
            _by_cause(tally.lost_causes, "dropped: "),
        )

    async def log_periodically(self) -> None:
        """Log every `every_s` seconds until cancelled, also while every prompt waits on a retry."""
        while True:
            await asyncio.sleep(self.every_s)
            self.log_line()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.total:
            self.log_line()


def _by_cause(counts, prefix: str = "") -> str:
    """'4 (429 3, timeout 1)': the total of the causes starting with `prefix`, and each."""
    parts = {cause[len(prefix) :]: n for cause, n in counts.most_common() if cause.startswith(prefix)}
    details = ", ".join(f"{cause} {n}" for cause, n in parts.items())
    return f"{sum(parts.values())} ({details})" if parts else "0"
