"""How long to wait before retrying a request: the server's Retry-After when it gives one, else exponential
backoff with full jitter. Shared by the teacher stage's API client and the served-teacher scorer.

    backoff(attempt, base_s, cap_s, retry_after(headers))   -> seconds to wait before retry `attempt`
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from typing import Any


def backoff(attempt: int, base_s: float, cap_s: float, retry_after_s: float | None = None) -> float:
    """Seconds before retry number `attempt` (1-based): the server's Retry-After when given, else
    exponential backoff with full jitter, uniform(0, min(cap, base * 2**(attempt-1)))."""
    if retry_after_s is not None:
        # A little jitter on top, so clients told the same Retry-After do not return in one burst.
        return retry_after_s + random.uniform(0, 0.1 * max(retry_after_s, 0.1))
    return random.uniform(0, min(cap_s, base_s * 2 ** (attempt - 1)))


def retry_after(headers: Any) -> float | None:
    """Seconds to wait from retry-after-ms (OpenAI) or Retry-After (seconds or an HTTP date)."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    try:
        if millis is not None:
            seconds = float(millis) / 1000
            return seconds if math.isnan(seconds) else max(0.0, seconds)
    except ValueError:
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isnan(seconds) else max(0.0, seconds)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
