"""Fixtures and helpers of the eval tests: a reversal test split, a student that has learned it, a judge
on loopback, TensorBoard events, the config of an eval run."""

from __future__ import annotations

import random
import shutil
import string
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.common.config import from_dict
from components.common.records import Record, record_id, write_records
from components.common.tiny_model import encode_example
from components.evaluate import Config


def write_events(folder, tag: str, values: list[float]) -> None:
    """TensorBoard events as the train stage writes them: `tag` every 5 steps, beside a learning rate
    (a scalar that is not a loss, which the curves must leave out)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    for step, value in enumerate(values):
        writer.add_scalar(tag, value, step * 5)
        writer.add_scalar("train/learning_rate", 0.1, step * 5)
    writer.close()


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


def memorize(base_dir: Path, path: Path, pairs: list[tuple[str, str]], steps: int) -> Path:
    """A copy of the model in `base_dir`, fully fine-tuned in `path` on the (prompt, answer) `pairs` until
    it reproduces them: a student with a skill, cheap to make (a few steps on the tiny model)."""
    shutil.copytree(base_dir, path, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    examples = [encode_example(tokenizer, prompt, answer) for prompt, answer in pairs]
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
    for _ in range(steps):
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def memorized_student_dir(tiny_model_dir, reversal_data_dir, tmp_path_factory) -> Path:
    """The tiny student fully fine-tuned on the test answers until it reproduces them: a stand-in for a
    distilled student that is cheap to make (a few steps on the tiny model) and certainly better than the untrained one."""
    from components.common.records import read_records

    pairs = [(r.messages[0]["content"], r.answer) for r in read_records(reversal_data_dir / "test.jsonl")]
    return memorize(tiny_model_dir, tmp_path_factory.mktemp("distilled"), pairs, steps=60)


class ReversalJudge:
    """An OpenAI-compatible judge on loopback (pipelines.loopback.ServerThread) that knows the reversal task:
    it prefers the answer that is the reversed word, says TIE when both or neither are, and answers the
    first chat request with a 429 so that the client's retry path runs."""

    def __init__(self) -> None:
        self.requests = 0
        self.authorization: str | None = None  # the last chat request's, to check which key was sent
        self.port = 0

    async def models(self, request):
        from aiohttp import web

        return web.json_response(
            {"object": "list", "data": [{"id": "judge-1", "object": "model", "owned_by": "t"}]}
        )

    async def chat(self, request):
        import re

        from aiohttp import web

        body = await request.json()
        self.requests += 1
        self.authorization = request.headers.get("Authorization")
        if self.requests == 1:
            return web.json_response(
                {"error": {"message": "slow down"}}, status=429, headers={"retry-after-ms": "10"}
            )
        prompt = body["messages"][-1]["content"]
        word = re.search(r"Reverse the letters of: (\w+)", prompt).group(1)
        a = re.search(r"Answer A:\n(.*?)\n\nAnswer B:", prompt, re.S).group(1).strip()
        b = re.search(r"Answer B:\n(.*?)\n\nWhich answer", prompt, re.S).group(1).strip()
        right_a, right_b = a == word[::-1], b == word[::-1]
        verdict = "A" if right_a and not right_b else "B" if right_b and not right_a else "TIE"
        content = f"Checked both against {word[::-1]}.\nVERDICT: {verdict}"
        return web.json_response(
            {
                "id": "c1",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59},
            }
        )

    def app(self):
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        return app


@pytest.fixture(scope="session")
def judge_server() -> ReversalJudge:
    from pipelines.loopback import ServerThread

    judge = ReversalJudge()
    with ServerThread(judge.app()) as server:
        judge.port = server.port
        yield judge


def eval_config(student: Path, trained: Path, data: Path, out: Path, **fields: Any) -> Config:
    """The eval run of `trained` against `student` on `data`, writing `out`: 12 new tokens, batches of 4,
    and `fields` (as a run file writes them) on top."""
    paths = {"student_dir": student, "trained_dir": trained, "data_dir": data, "output_dir": out}
    settings = {"max_new_tokens": 12, "batch_size": 4, **fields}
    return from_dict(Config, {**{name: str(path) for name, path in paths.items()}, **settings})


def benchmark_config(student: Path, trained: Path, data: Path, out: Path, tasks, **benchmarks) -> Config:
    """The eval run with lm-eval on `tasks` (and `benchmarks`' other fields), batches of 8."""
    benchmarks = {"tasks": tasks, "batch_size": 8, **benchmarks}
    return eval_config(student, trained, data, out, batch_size=8, benchmarks=benchmarks)
