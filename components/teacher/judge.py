"""Judge verification: a second model compares each answer with the dataset's reference.

The judge is asked through the same client class as the teacher (any OpenAI-compatible provider), with a
template that ends in "Reply with ACCEPT ... or REJECT"; the first of those words in the reply decides.
Its requests count against the run's budget at the judge's own prices, reserved before they leave.
With `hint_rejected` a rejected answer's prompt is asked once more with the gold answer as a hint
(guided chain of thought, seed 001), and the new answer is judged again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from components.common.openai_api import Answer, ApiTeacher, Failure, Retry
from components.common.retrying import ask_with_retries
from components.teacher.money import provider_prices
from components.teacher.templates import render_file_template

_VERDICT = re.compile(r"\b(ACCEPT|REJECT)\b", re.I)


@dataclass
class Judge:
    teacher: ApiTeacher
    template: str = "judge"

    @property
    def prices(self) -> tuple[float, float]:
        return provider_prices(self.teacher.provider)

    async def verdict(self, question: str, reference: str, answer: str, ask) -> dict[str, Any]:
        """{"verdict": "accept"|"reject"|"error", "model", "reply", "cost"}; transient errors are retried
        here. `ask(messages)` sends one request within the run's budget (Generator.paid_ask)."""
        prompt = render_file_template(self.template, prompt=question, reference=reference, answer=answer)
        messages = [{"role": "user", "content": prompt}]
        provider = self.teacher.provider
        cost = 0.0

        async def send() -> Answer | Retry | Failure | None:
            nonlocal cost
            paid = await ask(messages)
            if paid is None:
                return None
            outcome, request_cost = paid
            cost += request_cost
            return outcome

        outcome = await ask_with_retries(send, provider)
        if outcome is None:
            return {"verdict": "error", "model": provider.model, "reply": "budget reached", "cost": cost}
        if isinstance(outcome, Answer):
            reply = outcome.choices[0].content if outcome.choices else ""
            match = _VERDICT.search(reply)
            verdict = match.group(1).lower() if match else "reject"
            return {"verdict": verdict, "model": provider.model, "reply": reply[:500], "cost": cost}
        if isinstance(outcome, Failure):
            return {"verdict": "error", "model": provider.model, "reply": outcome.reason, "cost": cost}
        return {"verdict": "error", "model": provider.model, "reply": "retries exhausted", "cost": cost}


def hinted_messages(messages: list[dict[str, str]], reference: str, template: str) -> list[dict[str, str]]:
    """The prompt asked again with the gold answer as a hint (judge.hint_rejected): the last user turn
    rendered through `template`, which receives prompt and reference."""
    hinted = render_file_template(template, prompt=messages[-1]["content"], reference=reference)
    return [*messages[:-1], {"role": "user", "content": hinted}]
