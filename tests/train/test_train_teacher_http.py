"""The HTTP teacher scorer against a loopback server speaking vLLM's /v1/completions prompt_logprobs."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from aiohttp import web
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.common.config import from_dict
from components.common.errors import ConfigError, InputError
from components.common.records import read_records
from components.train import Config
from components.train.stage import run
from components.train.teacher_scoring import HttpScorer, LocalScorer
from pipelines.loopback import ServerThread
from tests.train.conftest import assert_resume_reaches_the_same_weights, assert_same_scores, vllm_app


def test_http_scores_equal_the_local_models_scores(tiny_teacher_dir, reversal_data):
    records = read_records(reversal_data / "train.jsonl")[:3]
    prompts, answers = [r.prompt_messages for r in records], [r.answer for r in records]
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    local = LocalScorer(AutoModelForCausalLM.from_pretrained(tiny_teacher_dir), tokenizer, top_k=4)
    with ServerThread(vllm_app(tiny_teacher_dir)) as server:
        remote = HttpScorer(server.url, "teacher", tokenizer, top_k=4).entries(prompts, answers)
    assert_same_scores(remote, local.entries(prompts, answers))


def test_a_scored_position_holding_a_positive_logprob_is_marked_bad_not_trained_on(
    tiny_teacher_dir, reversal_data
):
    record = read_records(reversal_data / "train.jsonl")[0]
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    with ServerThread(vllm_app(tiny_teacher_dir, spoil_last=True)) as server:
        (scored,) = HttpScorer(server.url, "teacher", tokenizer, top_k=4).entries(
            [record.prompt_messages], [record.answer]
        )
    assert scored.bad == {len(scored.positions) - 1}


def test_a_reply_without_usable_prompt_logprobs_is_an_error_naming_the_server(
    tiny_teacher_dir, reversal_data
):
    record = read_records(reversal_data / "train.jsonl")[0]
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    with ServerThread(vllm_app(tiny_teacher_dir, broken=True)) as server:
        scorer = HttpScorer(server.url, "teacher", tokenizer, top_k=4)
        with pytest.raises(InputError, match=r"^kd.teacher_url: http://127.0.0.1:\d+/v1/completions replied"):
            scorer.entries([record.prompt_messages], [record.answer])


def served_on_policy_kd(teacher_dir, url: str) -> dict:
    """On-policy KD scored by the teacher at `url`; `teacher_dir` gives its tokenizer."""
    return {
        "kind": "on_policy",
        "teacher_dir": str(teacher_dir),
        "teacher_url": url,
        "teacher_model": "teacher",
        "top_k": 8,
        "on_policy": {"max_new_tokens": 6},
    }


def test_on_policy_kd_with_a_teacher_served_over_http(make_config, tiny_teacher_dir):
    with ServerThread(vllm_app(tiny_teacher_dir)) as server:
        result = run(make_config(max_steps=2, kd=served_on_policy_kd(tiny_teacher_dir, server.url)))
    assert result.loss_parts["kd"] > 0 and math.isfinite(result.final_loss)
    assert result.kd_alignment["matched_positions"] > 0 and result.kd_alignment["unaligned_records"] == 0


def test_kill_9_then_resume_with_the_http_teacher_reaches_the_same_weights(
    make_config, tiny_teacher_dir, tmp_path
):
    with ServerThread(vllm_app(tiny_teacher_dir)) as server:
        kd = served_on_policy_kd(tiny_teacher_dir, server.url)
        assert_resume_reaches_the_same_weights(make_config, tmp_path, kd=kd)


@pytest.mark.parametrize(
    ("kd", "extra", "message"),
    [
        ({"teacher_url": "ftp://teacher:8000"}, {}, r"^kd.teacher_url: must start with http:// or https://"),
        ({}, {"intermediate": {"hidden_weight": 1.0}}, r"^kd.teacher_url: intermediate-layer terms need"),
    ],
)
def test_a_served_teacher_without_http_or_with_intermediate_terms_is_refused_at_load(
    tiny_model_dir, reversal_data, tmp_path, kd, extra, message
):
    served = {"kind": "logits", "teacher_dir": str(tiny_model_dir), "teacher_url": "http://teacher:8000"}
    fields = {
        "student_dir": str(tiny_model_dir),
        "data_dir": str(reversal_data),
        "output_dir": str(tmp_path / "out"),
        "tensorboard_dir": str(tmp_path / "tb"),
        "kd": {**served, **kd},
        **extra,
    }
    with pytest.raises(ConfigError, match=message):
        from_dict(Config, fields)


def dripping_app() -> web.Application:
    """A server that answers at once and then sends its reply a byte every 0.1 s, for ever: each read
    comes within any socket timeout."""

    async def completions(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        while True:
            await response.write(b" ")
            await asyncio.sleep(0.1)

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    return app


def test_a_server_dripping_its_reply_cannot_hold_the_stage_past_the_deadline(make_config, tiny_teacher_dir):
    with ServerThread(dripping_app()) as server:
        kd = {**served_on_policy_kd(tiny_teacher_dir, server.url), "teacher_timeout_s": 1.5}
        started = time.monotonic()
        with pytest.raises(InputError, match=r"did not score the tokens within kd.teacher_timeout_s=1.5;"):
            run(make_config(max_steps=2, kd=kd))
        assert time.monotonic() - started < 60
