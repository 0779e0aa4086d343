"""`provider.name: dataset`: no teacher is asked; each prompt's gold answer from the dataset (its
reference: alpaca `output`, the last assistant turn of sharegpt or messages rows, `fields.answer`) is its
answer. Labelled records then go through the stage as a teacher's would (filters, split, exports, the
record contract), so train can distil on them, online against a KD teacher's logits (seed 004's SFT and
GRPO data), or fine-tune on them. A prompt without a gold answer is dropped and counted."""

from __future__ import annotations

import asyncio
from typing import Any

from components.common.openai_api import Answer, Choice
from components.common.provider_config import ProviderConfig

NO_GOLD = "no gold answer in the dataset"


class GoldAnswers:
    def __init__(self, provider: ProviderConfig):
        self.provider = provider

    @property
    def settings(self) -> dict[str, Any]:
        return self.provider.settings()

    async def preflight(self) -> None:
        """Nothing to reach."""

    async def generate_all(self, generator, jobs: list) -> Any:
        with generator.stopping_on_signals():
            for job in jobs:
                if not job.prompt.reference:
                    generator.tally.lost("dropped", NO_GOLD)
                    continue
                job.spent.requests += 1
                await generator.answered(job, Answer([Choice(job.prompt.reference, finish_reason="stop")]))
        await asyncio.to_thread(generator.journal.flush)
        generator.raise_if_interrupted()
        await asyncio.to_thread(generator.journal.compact)
        return generator.tally
