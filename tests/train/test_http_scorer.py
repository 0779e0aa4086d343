"""The served-teacher scorer's transport: several prompts per request, bounded concurrency, retries by
cause, against loopback servers speaking vLLM's /v1/completions with prompt_logprobs."""

from __future__ import annotations

import http.server
import json
import math
import threading
import time
from contextlib import contextmanager

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.common.config import from_dict
from components.common.errors import ConfigError, InputError
from components.common.records import read_records
from components.train.config import KDSettings
from components.train.teacher_scoring import HttpScorer, LocalScorer
from pipelines.demo_scoring_server import scored_positions, scoring_app
from pipelines.loopback import ServerThread
from tests.train.conftest import assert_same_scores, vllm_app


@pytest.fixture(scope="module")
def samples(reversal_data) -> tuple[list, list]:
    records = read_records(reversal_data / "train.jsonl")[:12]
    return [r.prompt_messages for r in records], [r.answer for r in records]


@pytest.fixture(scope="module")
def tokenizer(tiny_teacher_dir):
    return AutoTokenizer.from_pretrained(tiny_teacher_dir)


def fast_scorer(url: str, tokenizer, **transport) -> HttpScorer:
    return HttpScorer(url, "teacher", tokenizer, top_k=4, timeout_s=10.0, **transport)


@pytest.mark.parametrize(("refuse_lists", "sizes"), [(False, [2, 2, 1]), (True, [1, 1, 1, 1, 1])])
def test_scorer_sends_several_prompts_per_request_where_the_server_takes_them(
    tiny_teacher_dir, tokenizer, samples, refuse_lists, sizes
):
    prompts, answers = samples[0][:5], samples[1][:5]
    seen: list[int] = []
    with ServerThread(vllm_app(tiny_teacher_dir, refuse_lists=refuse_lists, seen=seen)) as server:
        remote = fast_scorer(server.url, tokenizer, batch_size=2, concurrency=2).entries(prompts, answers)
    assert sorted(seen, reverse=True) == sizes
    local = LocalScorer(AutoModelForCausalLM.from_pretrained(tiny_teacher_dir), tokenizer, top_k=4)
    assert_same_scores(remote, local.entries(prompts, answers))


def test_scorer_keeps_the_concurrency_bound_in_flight(tokenizer, samples):
    app, stats = scoring_app(len(tokenizer), latency_s=0.3)
    with ServerThread(app) as server:
        scored = fast_scorer(server.url, tokenizer, batch_size=1, concurrency=3).entries(*samples)
    assert len(scored) == len(samples[0]) and all(not s.bad for s in scored)
    assert stats.requests == len(samples[0]) and stats.most_in_flight == 3


@pytest.mark.parametrize("faults", [[503, 429], [500, 502]])
def test_scorer_retries_a_busy_or_failing_server(tokenizer, samples, faults):
    app, stats = scoring_app(len(tokenizer), faults=faults, retry_after_s=0.4)
    started = time.monotonic()
    with ServerThread(app) as server:
        (scored,) = fast_scorer(server.url, tokenizer, retries=2).entries(samples[0][:1], samples[1][:1])
    assert not scored.bad and stats.requests == 3
    if 429 in faults:  # waited out both Retry-Afters
        assert time.monotonic() - started >= 0.8


def test_scorer_gives_up_after_its_retries_naming_the_server_and_the_cause(tokenizer, samples):
    app, stats = scoring_app(len(tokenizer), faults=[502] * 5)
    with (
        ServerThread(app) as server,
        pytest.raises(InputError, match=r"^kd.teacher_url: http://.*\(3 tries\).*502"),
    ):
        fast_scorer(server.url, tokenizer, retries=2).entries(samples[0][:1], samples[1][:1])
    assert stats.requests == 3


def test_scorer_does_not_retry_a_request_the_server_refuses(tokenizer, samples):
    app, stats = scoring_app(len(tokenizer), faults=[404])
    with ServerThread(app) as server, pytest.raises(InputError, match=r"\(1 tries\).*404"):
        fast_scorer(server.url, tokenizer, retries=3).entries(samples[0][:1], samples[1][:1])
    assert stats.requests == 1


def test_scorer_refuses_a_reply_without_one_choice_per_prompt(tokenizer, samples):
    app, _ = scoring_app(len(tokenizer), drop_a_choice=True)
    with ServerThread(app) as server, pytest.raises(InputError, match=r"without one choice per prompt"):
        fast_scorer(server.url, tokenizer, batch_size=4).entries(samples[0][:4], samples[1][:4])


@pytest.mark.parametrize(
    ("field", "value"), [("teacher_batch_size", 0), ("teacher_concurrency", 0), ("teacher_retries", -1)]
)
def test_scorer_settings_out_of_range_are_refused_at_load(tiny_teacher_dir, field, value):
    kd = {
        "kind": "logits",
        "teacher_dir": str(tiny_teacher_dir),
        "teacher_url": "http://t:8000",
        field: value,
    }
    with pytest.raises(ConfigError, match=rf"^kd.{field}: must be"):
        from_dict(KDSettings, kd)


class KeptAliveTeacher(http.server.BaseHTTPRequestHandler):
    """vLLM's /v1/completions over HTTP/1.1 kept-alive connections (one handler per connection); `mode`
    says what the server does after a connection's first reply, or to its second request."""

    protocol_version = "HTTP/1.1"
    mode = "keep"
    seen: dict[str, int]
    last_logprob: object = -1.0  # the logprob sent for each prompt's last token

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen["requests"] += 1
        self.served = getattr(self, "served", 0) + 1
        if self.served == 2 and self.mode == "drop_the_second_request":
            self.close_connection = True  # no reply: the connection was closed as the request came in
            return
        prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]
        choices = [
            {"index": at, "prompt_logprobs": scored_positions(ids, body["prompt_logprobs"], VOCAB)}
            for at, ids in enumerate(prompts)
        ]
        for choice, ids in zip(choices, prompts, strict=True):
            choice["prompt_logprobs"][-1][str(ids[-1])]["logprob"] = self.last_logprob
        reply = json.dumps({"choices": choices}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        if self.served == 2 and self.mode == "drip_the_second_reply":
            # Its last 60 bytes a byte every 0.05 s: each read well within any timeout, the whole 3 s.
            self.wfile.write(reply[:-60])
            try:
                for at in range(len(reply) - 60, len(reply)):
                    time.sleep(0.05)
                    self.wfile.write(reply[at : at + 1])
            except ConnectionError:  # the client gave up at its deadline
                self.close_connection = True
            return
        self.wfile.write(reply)
        # The connection stays open by HTTP/1.1's default; the server then closes it as an idle one.
        self.close_connection = self.mode == "close_when_idle"

    def setup(self) -> None:
        super().setup()
        self.seen["connections"] += 1

    def log_message(self, *args) -> None:
        pass


VOCAB = 64


@contextmanager
def kept_alive_teacher(mode: str, last_logprob: object = -1.0):
    seen = {"requests": 0, "connections": 0}
    handler = type("Handler", (KeptAliveTeacher,), {"mode": mode, "seen": seen, "last_logprob": last_logprob})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_scorer_keeps_one_connection_alive_across_requests(tokenizer, samples):
    with kept_alive_teacher("keep") as (url, seen):
        scorer = fast_scorer(url, tokenizer, batch_size=1, concurrency=1)
        scored = scorer.entries(samples[0][:3], samples[1][:3])
        scored += scorer.entries(samples[0][3:4], samples[1][3:4])
    assert len(scored) == 4 and all(s.positions and not s.bad for s in scored)
    assert seen == {"requests": 4, "connections": 1}


@pytest.mark.parametrize("mode", ["close_when_idle", "drop_the_second_request"])
def test_scorer_reconnects_when_the_server_drops_a_kept_alive_connection(tokenizer, samples, mode):
    with kept_alive_teacher(mode) as (url, seen):
        scorer = fast_scorer(url, tokenizer, retries=0)  # a retry by cause would hide a missing reconnect
        (first,) = scorer.entries(samples[0][:1], samples[1][:1])
        time.sleep(0.2)  # the server's close reaches the idle connection
        (second,) = scorer.entries(samples[0][1:2], samples[1][1:2])
    assert first.positions and not first.bad and second.positions and not second.bad
    assert seen["connections"] == 2


def test_scorer_deadline_cuts_a_reply_that_stalls_midway_on_a_kept_alive_connection(tokenizer, samples):
    with kept_alive_teacher("drip_the_second_reply") as (url, _):
        scorer = HttpScorer(url, "teacher", tokenizer, top_k=4, timeout_s=1.0, retries=0)
        scorer.entries(samples[0][:1], samples[1][:1])
        started = time.monotonic()
        with pytest.raises(InputError, match=r"within kd.teacher_timeout_s=1;"):
            scorer.entries(samples[0][1:2], samples[1][1:2])
    assert time.monotonic() - started < 2.5


def test_scorer_goes_through_the_http_proxy_of_the_environment(tokenizer, samples, monkeypatch):
    app, stats = scoring_app(len(tokenizer))
    with ServerThread(app) as proxy:  # it answers the absolute-form requests a proxy gets
        for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("http_proxy", proxy.url)
        (scored,) = fast_scorer("http://teacher.invalid:8000", tokenizer, retries=0).entries(
            samples[0][:1], samples[1][:1]
        )
    assert scored.positions and not scored.bad and stats.requests == 1


@pytest.mark.parametrize(
    ("logprob", "bad"),
    [
        (math.nan, True),
        (-math.inf, True),
        (0.5, True),
        (True, True),
        ("-1", True),
        (-1, False),
        (-0.0, False),
    ],
)
def test_scorer_marks_bad_an_answer_token_whose_logprob_is_not_a_finite_number_at_most_0(
    tokenizer, samples, logprob, bad
):
    with kept_alive_teacher("keep", last_logprob=logprob) as (url, _):
        (scored,) = fast_scorer(url, tokenizer).entries(samples[0][:1], samples[1][:1])
    assert scored.bad == ({len(scored.positions) - 1} if bad else set())
