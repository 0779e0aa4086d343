"""Loss masks: only the assistant's answer (and its end-of-turn token) is scored, token by token."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from components.common.errors import InputError
from components.common.records import Record
from components.train.data import IGNORE, Encoder


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def scored(example) -> list[int]:
    return [label for label in example.labels if label != IGNORE]


RECORD = Record(
    id="r1",
    messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Reverse the letters of: kite"},
        {"role": "assistant", "content": "etik"},
    ],
    reasoning="Read kite from the end.",
)


def test_only_the_answer_and_end_of_turn_are_scored_token_by_token(tokenizer):
    example = Encoder(tokenizer, 256).encode(RECORD)
    text = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nReverse the letters of: kite<|im_end|>\n"
        "<|im_start|>assistant\netik<|im_end|>\n"
    )
    assert example.input_ids == ids(tokenizer, text)
    answer = ids(tokenizer, "etik<|im_end|>")
    start = len(ids(tokenizer, text.split("etik")[0]))
    expected = [IGNORE] * len(example.input_ids)
    expected[start : start + len(answer)] = answer
    # Every position: the prompt, the template's "assistant\n", and the trailing "\n" are all unscored.
    assert example.labels == expected


def test_reasoning_is_dropped_seen_or_trained_as_asked(tokenizer):
    think = "<think>\nRead kite from the end.\n</think>\n\netik<|im_end|>"
    dropped = Encoder(tokenizer, 256, reasoning="drop").encode(RECORD)
    context = Encoder(tokenizer, 256, reasoning="context").encode(RECORD)
    trained = Encoder(tokenizer, 256, reasoning="train").encode(RECORD)
    assert scored(dropped) == ids(tokenizer, "etik<|im_end|>")
    assert "<think>" not in tokenizer.decode(dropped.input_ids)
    assert context.input_ids == trained.input_ids
    assert tokenizer.decode(context.input_ids).endswith(think + "\n")
    assert scored(trained) == ids(tokenizer, think)
    # In context mode the chain of thought is read but only what follows </think> is learned.
    assert scored(context) == ids(tokenizer, "\n\netik<|im_end|>")


def test_earlier_assistant_turns_are_scored_only_with_all_turns(tokenizer):
    record = Record(
        id="multi",
        messages=[
            {"role": "user", "content": "Copy the letters of: ab"},
            {"role": "assistant", "content": "ab"},
            {"role": "user", "content": "Reverse the letters of: ab"},
            {"role": "assistant", "content": "ba"},
        ],
    )
    last = Encoder(tokenizer, 256, assistant_turns="last").encode(record)
    every = Encoder(tokenizer, 256, assistant_turns="all").encode(record)
    assert scored(last) == ids(tokenizer, "ba<|im_end|>")
    assert scored(every) == ids(tokenizer, "ab<|im_end|>ba<|im_end|>")
    assert last.input_ids == every.input_ids


def test_truncation_policies(tokenizer):
    full = Encoder(tokenizer, 256).encode(RECORD)
    limit = len(full.input_ids) - 5
    assert Encoder(tokenizer, limit, truncation="drop").encode(RECORD) is None
    left = Encoder(tokenizer, limit, truncation="left").encode(RECORD)
    assert left.input_ids == full.input_ids[5:]
    assert scored(left) == scored(full), "left truncation keeps the whole answer"
    right = Encoder(tokenizer, limit, truncation="right").encode(RECORD)
    assert right.input_ids == full.input_ids[:limit]
    assert scored(right) == scored(full)[:-4]


def test_a_record_without_an_answer_is_refused(tokenizer):
    prompt_only = Record(id="p", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(InputError, match="record p: the last message must be the assistant"):
        Encoder(tokenizer, 256).encode(prompt_only)
