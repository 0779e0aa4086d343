"""Progress: a bar on a terminal, and on every logging step one line a log pane can show.

phase main step 200/800 loss 0.4123 ce 0.4123 lr 1.95e-03 grad_norm 0.812 tok/s 14210 eta 0:00:44
"""

from __future__ import annotations

import datetime
import logging
import sys
import time

log = logging.getLogger("components.train")


class Progress:
    def __init__(self, phase: str, total: int, start: int, enabled: bool):
        self.phase = phase
        self.total = total
        self.start_step = start
        self.enabled = enabled
        self.started = self.window_started = time.monotonic()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=phase, unit="step", dynamic_ncols=True)

    def update(self, step: int, window_tokens: float) -> float:
        """Advance to `step`; returns the tokens per second of the window since the last update."""
        now = time.monotonic()
        seconds = max(now - self.window_started, 1e-9)
        self.window_started = now
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
        return window_tokens / seconds

    def eta(self, step: int) -> str:
        done = step - self.start_step
        if done <= 0:
            return "?"
        remaining = (time.monotonic() - self.started) / done * (self.total - step)
        return str(datetime.timedelta(seconds=round(remaining)))

    def log_line(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        parts = [f"phase {self.phase} step {step}/{self.total}"]
        for key, value in scalars.items():
            name = key.removeprefix("train/")
            if name in ("phase", "tokens_per_second"):
                continue
            parts.append(f"{name} {value:.2e}" if name == "lr" else f"{name} {value:.4f}")
        parts.append(f"tok/s {scalars.get('train/tokens_per_second', 0.0):.0f} eta {self.eta(step)}")
        log.info(" ".join(parts))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
