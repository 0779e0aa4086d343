"""LLM-as-judge: does the distilled student answer as well as the teacher?

For each test prompt the judge model sees the question and two answers, the student's and the teacher's,
and replies "VERDICT: A", "VERDICT: B" or "VERDICT: TIE". The student is answer A on even samples and
answer B on odd ones, so a judge that favours a position gains neither side.

    win rate = (student wins + ties / 2) / judged samples      (0.5: as good as the teacher)

Requests go through the teacher stage's client (components/common/openai_api.py): any OpenAI-compatible
provider, key from the environment, 429/5xx retried with the provider's backoff settings.
"""

from __future__ import annotations

import asyncio
import logging
import re

from components.common.errors import InputError
from components.evaluate.config import JudgeConfig

log = logging.getLogger(__name__)

PROMPT = """You are a strict judge comparing two answers to the same question.

Question:
{question}

Answer A:
{answer_a}

Answer B:
{answer_b}

Which answer is more correct and helpful? Judge content, not length or style.
End your reply with exactly one line: "VERDICT: A", "VERDICT: B" or "VERDICT: TIE"."""

_VERDICT = re.compile(r"VERDICT:\s*\**\s*(A|B|TIE)\b", re.I)


def parse_verdict(reply: str) -> str | None:
    """ "A", "B", "TIE" from the last VERDICT line of the reply, or None when there is none."""
    found = _VERDICT.findall(reply)
    return found[-1].upper() if found else None


def judge_win_rate(
    config: JudgeConfig, questions: list[str], student: list[str], teacher: list[str]
) -> tuple[dict[str, float], list[str]]:
    """(metrics judge_win_rate/judge_tie_rate/judge_samples/judge_errors, per-sample outcome)
    where an outcome is "student", "teacher", "tie" or "error: <reason>"."""
    return asyncio.run(_judge_all(config, questions, student, teacher))


async def _judge_all(config, questions, student, teacher) -> tuple[dict[str, float], list[str]]:
    from components.common.openai_api import ApiTeacher
    from components.common.providers import resolve_provider

    client = ApiTeacher(resolve_provider(config.provider), concurrency=config.concurrency)
    count = min(len(questions), config.max_samples)
    try:
        await client.preflight()
        slots = asyncio.Semaphore(config.concurrency)
        outcomes = await asyncio.gather(
            *(judge_one(client, slots, i, questions, student, teacher) for i in range(count))
        )
    finally:
        await client.client.close()  # release pooled connections before asyncio.run closes the loop
    errors = [o for o in outcomes if o.startswith("error:")]
    judged = count - len(errors)
    if not judged:
        raise InputError(f"judge: every one of {count} requests failed; first: {errors[0]}")
    if errors:
        log.warning("judge: %d of %d samples not judged; first: %s", len(errors), count, errors[0])
    wins, ties = outcomes.count("student"), outcomes.count("tie")
    metrics = {
        "judge_win_rate": (wins + ties / 2) / judged,
        "judge_tie_rate": ties / judged,
        "judge_samples": float(judged),
        "judge_errors": float(len(errors)),
    }
    return metrics, list(outcomes)


async def judge_one(client, slots: asyncio.Semaphore, i: int, questions, student, teacher) -> str:
    """Sample i's outcome; the student is answer A on even samples, B on odd ones."""
    student_is_a = i % 2 == 0
    a, b = (student[i], teacher[i]) if student_is_a else (teacher[i], student[i])
    prompt = PROMPT.format(question=questions[i], answer_a=a, answer_b=b)
    async with slots:
        reply = await ask(client, prompt)
    if reply.startswith("error:"):
        return reply
    verdict = parse_verdict(reply)
    if verdict is None:
        return f"error: no VERDICT line in the judge's reply {reply[-200:]!r}"
    if verdict == "TIE":
        return "tie"
    return "student" if (verdict == "A") == student_is_a else "teacher"


async def ask(client, prompt: str) -> str:
    """The judge's reply, or "error: <reason>" once retries are spent or the failure is permanent."""
    from components.common.openai_api import Answer, Failure
    from components.common.retrying import ask_with_retries

    messages = [{"role": "user", "content": prompt}]
    outcome = await ask_with_retries(lambda: client.ask(messages), client.provider)
    if isinstance(outcome, Answer):
        return outcome.choices[0].content if outcome.choices else ""
    if isinstance(outcome, Failure):
        return f"error: {outcome.reason}"
    return f"error: retries exhausted ({outcome.reason})"
