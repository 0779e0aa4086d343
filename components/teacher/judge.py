"""Judge verification: a second model compares each answer with the dataset's reference.

The judge is asked through the same client class as the teacher (any OpenAI-compatible provider), with a
template that ends in "Reply with ACCEPT ... or REJECT"; the first of those words in the reply decides.
Its requests count against the run's budget at the judge's own prices, reserved before they leave.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from components.common.backoff import backoff
from components.common.openai_api import Answer, ApiTeacher, Failure, Retry
from components.teacher.templates import render_file_template

_VERDICT = re.compile(r"\b(ACCEPT|REJECT)\b", re.I)


@dataclass
class Judge:
    teacher: ApiTeacher
    template: str = "judge"

    @property
    def prices(self) -> tuple[float, float]:
        provider = self.teacher.provider
        return provider.price_input_per_m or 0.0, provider.price_output_per_m or 0.0

    async def verdict(self, question: str, reference: str, answer: str, ask) -> dict[str, Any]:
        """{"verdict": "accept"|"reject"|"error", "model", "reply", "cost"}; transient errors are retried
        here. `ask(messages)` sends one request within the run's budget (Generator.paid_ask)."""
        prompt = render_file_template(self.template, prompt=question, reference=reference, answer=answer)
        messages = [{"role": "user", "content": prompt}]
        provider = self.teacher.provider
        cost = 0.0
        for attempt in range(provider.max_retries + 1):
            paid = await ask(messages)
            if paid is None:
                return {"verdict": "error", "model": provider.model, "reply": "budget reached", "cost": cost}
            outcome, request_cost = paid
            cost += request_cost
            if isinstance(outcome, Answer):
                reply = outcome.choices[0].content if outcome.choices else ""
                match = _VERDICT.search(reply)
                verdict = match.group(1).lower() if match else "reject"
                return {"verdict": verdict, "model": provider.model, "reply": reply[:500], "cost": cost}
            if isinstance(outcome, Failure):
                return {"verdict": "error", "model": provider.model, "reply": outcome.reason, "cost": cost}
            assert isinstance(outcome, Retry)
            await asyncio.sleep(
                backoff(attempt + 1, provider.backoff_s, provider.backoff_max_s, outcome.after_s)
            )
        return {"verdict": "error", "model": provider.model, "reply": "retries exhausted", "cost": cost}
