"""Fixtures of the eval tests: a reversal test split and a student that has learned it."""

from __future__ import annotations

import random
import shutil
import string
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.common.records import Record, record_id, write_records
from components.download.tiny import encode_example

TEACHER = {"provider": "demo", "model": "reverser", "params": {"temperature": 0}}


def reversal_records(count: int, seed: int = 0) -> list[Record]:
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 6)))
        prompt = [{"role": "user", "content": f"Reverse the letters of: {word}"}]
        records.append(
            Record(
                id=record_id(prompt, TEACHER),
                messages=prompt + [{"role": "assistant", "content": word[::-1]}],
                reasoning=f"Read {word} from the end.",
                teacher=TEACHER,
                usage={"prompt_tokens": 12, "completion_tokens": len(word) + 1},
                split="test",
            )
        )
    return records


@pytest.fixture(scope="session")
def reversal_data_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher-data")
    write_records(path / "test.jsonl", reversal_records(8))
    return path


@pytest.fixture(scope="session")
def memorized_student_dir(tiny_model_dir, reversal_data_dir, tmp_path_factory) -> Path:
    """The tiny student fully fine-tuned on the test answers until it reproduces them: a stand-in for a
    distilled student that is cheap to make (about 2 s) and certainly better than the untrained one."""
    from components.common.records import read_records

    path = tmp_path_factory.mktemp("distilled")
    shutil.copytree(tiny_model_dir, path, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    examples = [
        encode_example(tokenizer, r.messages[0]["content"], r.answer)
        for r in read_records(reversal_data_dir / "test.jsonl")
    ]
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), tokenizer.pad_token_id)
    labels = torch.full((len(examples), width), -100)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(examples):
        input_ids[row, : len(ids)], labels[row, : len(lab)], attention[row, : len(ids)] = (
            torch.tensor(ids),
            torch.tensor(lab),
            1,
        )
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(path)
    return path
