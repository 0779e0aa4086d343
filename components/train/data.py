"""Records to token ids and loss masks, through the student's own chat template.

The labels score the assistant's answer and the end-of-turn token that follows it; every other position
(system, user, template scaffolding, padding) is -100. The answer's tokens are found by rendering the chat
twice, with and without the answer, and taking the difference, so any chat template whose rendering of a
conversation starts with the rendering of its prompt works (ChatML, Llama 3, Qwen 3, ...).

Reasoning (the teacher's chain of thought, `Record.reasoning`) is placed before the answer as
`<think>\\n...\\n</think>\\n\\n` when `reasoning` is "context" (seen, not scored) or "train" (scored).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from components.common.errors import ConfigError, InputError
from components.common.records import Record

log = logging.getLogger(__name__)

IGNORE = -100


@dataclass
class Example:
    """One training sequence: ids, labels (-100 where unscored) and the record it came from."""

    input_ids: list[int]
    labels: list[int]
    record_id: str
    # Sparse teacher distribution per scored position, aligned with the scored labels (see sparse_kd).
    teacher_topk: list | None = None  # list[cross_tokenizer.TopK | None]
    source: str = "main"
    # True for a continuation the student sampled itself (on-policy KD): scored by the teacher, no CE.
    sampled: bool = False

    @property
    def num_scored(self) -> int:
        # Position 0 has no previous token to predict it from: it is never a target.
        return sum(1 for label in self.labels[1:] if label != IGNORE)


def split_prompt(example: Example) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of an encoded record: the answer starts at its first scored token."""
    start = next((i for i, label in enumerate(example.labels) if label != IGNORE), len(example.labels))
    return example.input_ids[:start], [label for label in example.labels[start:] if label != IGNORE]


def render_ids(tokenizer, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(
        list(messages), tokenize=True, add_generation_prompt=add_generation_prompt
    )
    return list(out["input_ids"] if isinstance(out, Mapping) else out)


def with_reasoning(answer: str, reasoning: str | None) -> str:
    """The assistant text with the chain of thought in Qwen3/DeepSeek-R1 form in front of it."""
    if not reasoning:
        return answer
    return f"<think>\n{reasoning}\n</think>\n\n{answer}"


class Encoder:
    """Turns records into `Example`s; holds the tokenizer facts it needs, computed once."""

    def __init__(
        self,
        tokenizer,
        max_length: int,
        truncation: str = "drop",
        reasoning: str = "drop",
        assistant_turns: str = "last",
    ):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.truncation = truncation
        self.reasoning = reasoning
        self.assistant_turns = assistant_turns
        self.special_ids = set(tokenizer.all_special_ids)
        self.think_end_id = None
        if reasoning == "context":
            ids = tokenizer("</think>", add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ConfigError(
                    "reasoning: 'context' masks the chain of thought up to the </think> token, but this "
                    f"tokenizer splits '</think>' into {len(ids)} tokens; use 'drop' or 'train'"
                )
            self.think_end_id = ids[0]

    def encode(self, record: Record) -> Example | None:
        """The example for `record`, or None when it is too long and truncation is 'drop'."""
        messages = [dict(m) for m in record.messages]
        if not messages or messages[-1]["role"] != "assistant":
            raise InputError(f"record {record.id}: the last message must be the assistant's answer")
        if self.reasoning != "drop" and record.reasoning:
            messages[-1]["content"] = with_reasoning(messages[-1]["content"], record.reasoning)
        ids: list[int] = []
        labels: list[int] = []
        last = len(messages) - 1
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prefix = render_ids(self.tokenizer, messages[:index], add_generation_prompt=True)
            full = render_ids(self.tokenizer, messages[: index + 1], add_generation_prompt=False)
            if full[: len(prefix)] != prefix or prefix[: len(ids)] != ids:
                raise InputError(
                    f"record {record.id}: the chat template renders the conversation so that it does not "
                    "start with the rendering of its prompt; loss masking needs a prefix-stable template"
                )
            labels += [IGNORE] * (len(prefix) - len(ids))
            segment = full[len(prefix) :]
            scored = index == last or self.assistant_turns == "all"
            labels += self._segment_labels(segment) if scored else [IGNORE] * len(segment)
            ids = full
        return self._fit(Example(ids, labels, record.id), record)

    def _segment_labels(self, segment: list[int]) -> list[int]:
        """Score the answer through its end-of-turn token; not the template's text after it."""
        end = len(segment)
        for position in range(len(segment) - 1, -1, -1):
            if segment[position] in self.special_ids:
                end = position + 1
                break
        labels = segment[:end] + [IGNORE] * (len(segment) - end)
        if self.reasoning == "context" and self.think_end_id in segment[:end]:
            cut = segment.index(self.think_end_id) + 1
            labels[:cut] = [IGNORE] * cut
        return labels

    def _fit(self, example: Example, record: Record) -> Example | None:
        excess = len(example.input_ids) - self.max_length
        if excess <= 0:
            return example
        if self.truncation == "drop":
            return None
        if self.truncation == "right":
            example.input_ids = example.input_ids[: self.max_length]
            example.labels = example.labels[: self.max_length]
        else:
            # "left" keeps the answer whole and drops the oldest prompt tokens.
            first_scored = next((i for i, lab in enumerate(example.labels) if lab != IGNORE), 0)
            if excess > first_scored:
                return None
            example.input_ids = example.input_ids[excess:]
            example.labels = example.labels[excess:]
        example.labels[0] = IGNORE
        return example if example.num_scored else None


def encode_records(encoder: Encoder, records: Sequence[Record], source: str = "main") -> list[Example]:
    """Encode every record; too-long ones are dropped with a count in the log, never silently."""
    if not records:
        raise InputError(
            f"the {source} training data holds no records: nothing to train on. The teacher stage answered "
            "no prompt (its log says why prompts failed); fix the cause and run it again"
        )
    examples = []
    for record in records:
        example = encoder.encode(record)
        if example is not None:
            example.source = source
            examples.append(example)
    dropped = len(records) - len(examples)
    if dropped:
        log.warning(
            "%d of %d %s records do not fit max_length=%d with truncation=%r and were skipped",
            dropped,
            len(records),
            source,
            encoder.max_length,
            encoder.truncation,
        )
    if not examples:
        raise InputError(
            f"no {source} record fits max_length={encoder.max_length}: raise max_length or set "
            "truncation to 'left' or 'right'"
        )
    return examples
