"""Fixtures of the train-stage tests: a small teacher dataset of the demo task and a config factory."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import signal
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from aiohttp import web
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.common.config import from_dict, to_dict
from components.common.records import Record, record_id, write_records
from components.common.store import open_store
from components.train import Config
from components.train.data import Encoder
from components.train.sparse_kd import byte_symbols, scored_tokens
from components.train.stage import Result

REPO = Path(__file__).resolve().parents[2]

TEACHER = {"provider": "test", "model": "reverser"}


def reversal_record(word: str, split: str = "train") -> Record:
    prompt = [{"role": "user", "content": f"Reverse the letters of: {word}"}]
    return Record(
        id=record_id(prompt, TEACHER),
        messages=[*prompt, {"role": "assistant", "content": word[::-1]}],
        reasoning=f"Read {word} from the end.",
        teacher=TEACHER,
        split=split,
    )


def reversal_records(count: int, seed: int = 0) -> list[Record]:
    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 6))) for _ in range(count)]
    return [reversal_record(word) for word in words]


@pytest.fixture(scope="session")
def reversal_data(tmp_path_factory) -> Path:
    """A teacher dataset folder: 64 train and 8 test records of the demo's reversal task."""
    folder = tmp_path_factory.mktemp("teacher-data")
    write_records(folder / "train.jsonl", reversal_records(64))
    write_records(folder / "test.jsonl", [reversal_record(w, "test") for w in ("abc", "hello", "kite")])
    return folder


@pytest.fixture
def make_config(tmp_path, tiny_model_dir, reversal_data):
    """Config(**defaults for a few fast steps on the tiny student, **overrides)."""

    def build(**overrides) -> Config:
        fields = {
            "student_dir": str(tiny_model_dir),
            "data_dir": str(reversal_data),
            "output_dir": str(tmp_path / "out"),
            "tensorboard_dir": str(tmp_path / "tb"),
            "max_steps": 4,
            "batch_size": 8,
            "learning_rate": 1e-3,
            "logging_steps": 2,
            "max_length": 64,
            **overrides,
        }
        return from_dict(Config, fields)

    return build


def assert_adapter_trained(result: Result) -> None:
    """The run took steps with a finite loss and moved every LoRA B matrix (they start at zero)."""
    assert result.steps > 0 and math.isfinite(result.final_loss), result
    weights = load_file(str(Path(result.output_dir) / "adapter_model.safetensors"))
    lora_b = {name: w for name, w in weights.items() if "lora_B" in name}
    assert lora_b, "the adapter holds no LoRA B matrices"
    unmoved = [name for name, w in lora_b.items() if not w.abs().sum() > 0]
    assert not unmoved, f"untrained LoRA B matrices: {unmoved[:3]}"


def train_until_killed(config: Config, config_file: Path, step: int) -> None:
    """Run `python -m components.train` on `config` and SIGKILL it once checkpoint `step` is complete
    in its store (a local folder or S3), as a node loss would."""
    config_file.write_text(yaml.safe_dump(to_dict(config)))
    command = [sys.executable, "-m", "components.train", "--config", str(config_file)]
    process = start_until_checkpoint(command, config.store_uri, config.run_id, step, hang_guard_s=300)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


def start_until_checkpoint(
    command: list[str], store_uri: str, run_id: str, step: int, hang_guard_s: float
) -> subprocess.Popen:
    """Start the training `command` and return its process once checkpoint `step` is complete in the
    store; `hang_guard_s` guards a loaded machine against a hang, it is not a speed check."""
    checkpoints = open_store(store_uri).child(f"runs/{run_id}/train/checkpoints")
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + hang_guard_s
    while not checkpoints.exists(f"step-{step:08d}/COMPLETE"):
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    return process


def assert_resume_reaches_the_same_weights(make_config, tmp_path: Path, **settings) -> None:
    """Train `settings` for 8 steps twice, the second run killed at its checkpoint of step 2 and run
    again: it must resume there and end with the uninterrupted run's adapter."""
    from components.train.stage import run

    def config(name: str) -> Config:
        return make_config(
            max_steps=8,
            save_steps=2,
            logging_steps=4,
            batch_size=4,
            seed=3,
            **settings,
            store_uri=str(tmp_path / f"store-{name}"),
            output_dir=str(tmp_path / name),
            tensorboard_dir=str(tmp_path / f"tb-{name}"),
        )

    reference = config("uninterrupted")
    run(reference)
    interrupted = config("killed")
    train_until_killed(interrupted, tmp_path / "killed.yaml", step=2)
    result = run(interrupted)
    assert result.steps == 8 and result.resumed_from >= 2
    got = load_file(f"{interrupted.output_dir}/adapter_model.safetensors")
    want = load_file(f"{reference.output_dir}/adapter_model.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4)


class RunsCode:
    """A pickle that, when loaded without weights_only, runs code: here it only writes a file."""

    def __init__(self, evidence: Path):
        self.evidence = str(evidence)

    def __reduce__(self):
        return (exec, (f"open({self.evidence!r}, 'w').write('ran')",))


def plant_code_in_optimizer_state(config, evidence: Path, rewrite_marker: bool) -> None:
    folder = Path(config.store_uri, "runs", config.run_id, "train", "checkpoints", "step-00000004")
    torch.save({"state": RunsCode(evidence), "param_groups": []}, folder / "optimizer.pt")
    if rewrite_marker:  # the attacker can write the whole bucket, marker included
        marker = json.loads((folder / "COMPLETE").read_text())
        data = (folder / "optimizer.pt").read_bytes()
        marker["files"]["optimizer.pt"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (folder / "COMPLETE").write_text(json.dumps(marker))


def vllm_app(
    model_dir,
    top_default: int = 5,
    broken: bool = False,
    spoil_last: bool = False,
    refuse_lists: bool = False,
    seen: list | None = None,
) -> web.Application:
    """What `vllm serve` answers to /v1/completions with `prompt_logprobs`, from a tiny HF model: one
    prompt of token ids, or a list of them (one choice each). `seen` gets each request's prompt count."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()

    def choice(index: int, ids: list[int], k: int) -> dict:
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        scored: list[dict | None] = [None]
        for t in range(1, len(ids)):
            row = logprobs[t - 1]
            top = row.topk(k)
            position = {
                str(int(i)): {"logprob": float(v), "rank": r + 1, "decoded_token": tokenizer.decode([int(i)])}
                for r, (v, i) in enumerate(zip(top.values, top.indices, strict=True))
            }
            own = int(ids[t])
            rank = int((row > row[own]).sum()) + 1
            position.setdefault(
                str(own), {"logprob": float(row[own]), "rank": rank, "decoded_token": tokenizer.decode([own])}
            )
            scored.append(position)
        if broken:
            scored = scored[:-1]
        if spoil_last:
            scored[-1] = {key: {**value, "logprob": 50.0} for key, value in scored[-1].items()}
        next_id = int(logprobs[-1].argmax())
        return {
            "index": index,
            "text": tokenizer.decode([next_id]),
            "finish_reason": "length",
            "prompt_logprobs": scored,
            "logprobs": None,
        }

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        prompts = body["prompt"]
        if prompts and all(isinstance(i, int) for i in prompts):
            prompts = [prompts]
        elif refuse_lists:
            return web.json_response({"error": "this test server takes one prompt"}, status=400)
        if not prompts or not all(
            isinstance(p, list) and all(isinstance(i, int) for i in p) for p in prompts
        ):
            return web.json_response({"error": "this test server takes token ids"}, status=400)
        if seen is not None:
            seen.append(len(prompts))
        k = int(body.get("prompt_logprobs") or top_default)
        tokens = sum(len(ids) for ids in prompts)
        return web.json_response(
            {
                "id": "cmpl-test",
                "object": "text_completion",
                "model": body.get("model", ""),
                "choices": [choice(index, ids, k) for index, ids in enumerate(prompts)],
                "usage": {"prompt_tokens": tokens, "completion_tokens": len(prompts), "total_tokens": tokens},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    return app


def assert_same_scores(remote: list, want: list) -> None:
    """The served teacher's positions equal the local model's, token by token and candidate by candidate."""
    assert len(remote) == len(want)
    for got_record, want_record in zip(remote, want, strict=True):
        assert not got_record.bad and not want_record.bad
        got_positions, want_positions = got_record.positions, want_record.positions
        assert [e.token for e in got_positions] == [e.token for e in want_positions]
        for got, expected in zip(got_positions, want_positions, strict=True):
            assert got.bytes == expected.bytes and got.logprob == pytest.approx(expected.logprob, abs=1e-4)
            assert [c.bytes for c in got.top_logprobs] == [c.bytes for c in expected.top_logprobs]
            assert [c.logprob for c in got.top_logprobs] == pytest.approx(
                [c.logprob for c in expected.top_logprobs], abs=1e-4
            )


def logprobs_from_teacher(records, tokenizer, teacher, k=4):
    """What an OpenAI-compatible server returns as logprobs.content, computed from the tiny teacher."""
    to_byte = {symbol: byte for byte, symbol in byte_symbols().items()}
    encoder = Encoder(tokenizer, 128)
    for record in records:
        example = encoder.encode(record)
        ids = torch.tensor([example.input_ids])
        with torch.no_grad():
            logprobs = torch.log_softmax(teacher(ids).logits[0, :-1], -1)
        positions = [t for t, label in enumerate(example.labels[1:]) if label != -100]
        entries = []
        for t, token in zip(positions, scored_tokens(example)[:-1], strict=False):  # no end-of-turn entry
            top = logprobs[t].topk(k)

            def entry(i, lp):
                text = tokenizer.convert_ids_to_tokens(i)
                return {"token": text, "logprob": float(lp), "bytes": [to_byte[c] for c in text]}

            entries.append(
                {
                    **entry(token, logprobs[t, token]),
                    "top_logprobs": [entry(int(i), v) for v, i in zip(top.values, top.indices, strict=True)],
                }
            )
        record.extra["logprobs"] = entries
    return records
