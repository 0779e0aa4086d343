"""A teacher that scores given text in its own tokens: a local model, or a vLLM server over HTTP.

Both return, for each (prompt, answer) pair (the answer as text, or as token ids when the student shares
the teacher's vocabulary: a sample need not be valid UTF-8 text), the teacher's top-k distribution at each of its answer
tokens as OpenAI logprobs entries (`token`, `bytes`, `logprob`, `top_logprobs`): the same form the API
teacher stores in the records, so cross_tokenizer.align maps either onto any student's tokens.

The HTTP scorer speaks vLLM's OpenAI-compatible /v1/completions with `prompt_logprobs`: the prompt is the
token ids of prompt + answer (a list of such lists for several samples in one request), `max_tokens: 1`,
and the choice with `index` i holds `prompt_logprobs[t]` for prompt i: token ids (as strings) mapped to
`{"logprob": ...}` for the top k at position t plus the prompt's own token there. The server's
reply is untrusted: a reply of the wrong length or shape is an error naming the server, never guessed at.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from operator import itemgetter

import torch

from components.common.backoff import backoff, retry_after
from components.common.deadline_http import DeadlineExceeded, Endpoint, StatusError
from components.common.errors import InputError
from components.common.logprobs import BadPosition, Positions, checked, logprob_field
from components.common.token_bytes import token_bytes
from components.train.data import render_ids
from components.train.modeling import backbone, padded_attention

log = logging.getLogger(__name__)


def answer_entries(
    answer_ids: list[int],
    top: list[list[tuple[int, float]]],
    own: list[float],
    tokenizer,
    bad: set[int] | None = None,
) -> Positions:
    """Logprobs positions from the teacher's answer ids, its top-k (id, logprob) and own logprobs; those
    in `bad` or holding a value that is not finite and <= 0 are marked bad."""
    table = token_bytes(tokenizer)
    positions = [
        table.position(i, lp, candidates) for i, lp, candidates in zip(answer_ids, own, top, strict=True)
    ]
    return checked(positions, bad)


class TeacherTokens:
    """The teacher-side token ids of (prompt messages, answer text), through the teacher's own template."""

    def __init__(self, tokenizer):
        if not tokenizer.chat_template:
            raise InputError(
                "kd.teacher_dir: the teacher's tokenizer has no chat template, so the prompt cannot be put "
                "in the teacher's own format; use a chat model's tokenizer folder"
            )
        self.tokenizer = tokenizer

    def __call__(self, prompt: Sequence[dict], answer: str | list[int]) -> tuple[list[int], list[int]]:
        """`answer` as text, or as ids already in the teacher's vocabulary (a student sharing it)."""
        prompt_ids = render_ids(self.tokenizer, prompt, add_generation_prompt=True)
        if isinstance(answer, list):
            return prompt_ids, answer
        return prompt_ids, self.tokenizer(answer, add_special_tokens=False)["input_ids"]


class LocalScorer:
    """A frozen local teacher model with its own tokenizer: one batched forward pass per call."""

    def __init__(self, model, tokenizer, top_k: int):
        self.model, self.tokens, self.top_k = model, TeacherTokens(tokenizer), top_k

    @torch.no_grad()
    def entries(
        self, prompts: Sequence[Sequence[dict]], answers: Sequence[str | list[int]]
    ) -> list[Positions]:
        pairs = [self.tokens(prompt, answer) for prompt, answer in zip(prompts, answers, strict=True)]
        device = self.model.get_output_embeddings().weight.device
        width = max(len(p) + len(a) for p, a in pairs)
        pad = self.tokens.tokenizer.pad_token_id or 0
        ids = torch.full((len(pairs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(pairs), width), dtype=torch.long)
        for row, (p, a) in enumerate(pairs):
            ids[row, : len(p) + len(a)] = torch.tensor(p + a)
            mask[row, : len(p) + len(a)] = 1
        with padded_attention(self.model):
            hidden = backbone(self.model)(
                input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False
            ).last_hidden_state
        out = []
        for row, (p, a) in enumerate(pairs):
            # Position t predicts token t + 1: the answer's tokens are predicted from len(p) - 1 on.
            logprobs = torch.log_softmax(
                self.model.get_output_embeddings()(hidden[row, len(p) - 1 : len(p) + len(a) - 1]).float(), -1
            )
            top = logprobs.topk(min(self.top_k, logprobs.shape[-1]), dim=-1)
            own = logprobs.gather(-1, torch.tensor(a, device=device)[:, None])[:, 0]
            candidates = [
                list(zip(i.tolist(), v.tolist(), strict=True))
                for i, v in zip(top.indices, top.values, strict=True)
            ]
            out.append(answer_entries(a, candidates, own.tolist(), self.tokens.tokenizer))
        return out


class HttpScorer:
    """A teacher served by vLLM's OpenAI-compatible server, scoring given tokens (prompt_logprobs).

    Up to `batch_size` samples go in one request (a list of prompts; a server that refuses lists gets one
    prompt per request from then on), up to `concurrency` requests are in flight over kept-alive
    connections, and a request that fails for a passing cause is retried up to `retries` times (see
    `retry_wait`). Each request must finish within `timeout_s` in all: a server dripping its reply cannot
    hold it.
    """

    def __init__(
        self,
        url: str,
        model: str,
        tokenizer,
        top_k: int,
        timeout_s: float = 120.0,
        batch_size: int = 8,
        concurrency: int = 8,
        retries: int = 4,
    ):
        self.url = url.rstrip("/") + "/v1/completions"
        self.endpoint = Endpoint(self.url)
        self.model, self.tokens, self.top_k = model, TeacherTokens(tokenizer), top_k
        self.timeout_s, self.batch_size, self.concurrency, self.retries = (
            timeout_s,
            batch_size,
            concurrency,
            retries,
        )

    def entries(
        self, prompts: Sequence[Sequence[dict]], answers: Sequence[str | list[int]]
    ) -> list[Positions]:
        samples = list(zip(prompts, answers, strict=True))
        groups = [samples[at : at + self.batch_size] for at in range(0, len(samples), self.batch_size)]
        if len(groups) <= 1 or self.concurrency == 1:
            return [scored for group in groups for scored in self._score_samples(group)]
        # Each worker renders its own samples too, so the first request leaves before the last is rendered.
        with ThreadPoolExecutor(min(self.concurrency, len(groups)), thread_name_prefix="scorer") as pool:
            return [scored for done in pool.map(self._score_samples, groups) for scored in done]

    def _score_samples(self, samples: list[tuple[Sequence[dict], str | list[int]]]) -> list[Positions]:
        return self._score([self.tokens(prompt, answer) for prompt, answer in samples])

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[Positions]:
        """One request for `pairs` (one prompt each), or one per pair where the server refuses lists."""
        if len(pairs) > 1 and self.batch_size == 1:
            return [scored for pair in pairs for scored in self._score([pair])]
        try:
            reply = self._post(pairs)
        except PromptListRefused:
            log.warning("kd.teacher_url: %s refuses a list of prompts; one prompt per request", self.url)
            self.batch_size = 1
            return [scored for pair in pairs for scored in self._score([pair])]
        return [
            self._parse(choice, prompt_ids, answer_ids)
            for choice, (prompt_ids, answer_ids) in zip(self._choices(reply, len(pairs)), pairs, strict=True)
        ]

    def _post(self, pairs: list[tuple[list[int], list[int]]]) -> dict:
        """The server's reply to one request for `pairs`, retried as `retry_wait` says."""
        ids = [prompt_ids + answer_ids for prompt_ids, answer_ids in pairs]
        body = {
            "model": self.model,
            "prompt": ids if len(ids) > 1 else ids[0],
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": self.top_k,
        }
        data, headers = json.dumps(body).encode(), {"Content-Type": "application/json"}
        for attempt in range(1, self.retries + 2):
            try:
                return json.loads(self.endpoint.post(data, headers, self.timeout_s))
            except (StatusError, OSError, http.client.HTTPException, ValueError) as error:
                if len(ids) > 1 and getattr(error, "code", None) in LIST_REFUSALS:
                    raise PromptListRefused from error
                wait = retry_wait(error, attempt)
                if wait is None or attempt > self.retries:
                    raise self._failure(error, attempt) from error
                log.warning("kd.teacher_url: %s (%s); try %d in %.1f s", self.url, error, attempt + 1, wait)
                time.sleep(wait)
        raise AssertionError("unreachable: the last try returns or raises")

    def _failure(self, error: BaseException, tries: int) -> InputError:
        if isinstance(error, DeadlineExceeded):
            return InputError(
                f"kd.teacher_url: {self.url} did not score the tokens within kd.teacher_timeout_s="
                f"{self.timeout_s:g}; {tries} tries; check that the server runs and is not overloaded, or "
                "raise it"
            )
        return InputError(f"kd.teacher_url: {self.url} did not score the tokens ({tries} tries): {error}")

    def _choices(self, reply: dict, count: int) -> list[dict]:
        """The reply's `count` choices in prompt order, each index 0..count-1 exactly once."""
        try:
            by_index = {int(choice.get("index", 0)): choice for choice in reply["choices"]}
            if len(reply["choices"]) != count or sorted(by_index) != list(range(count)):
                raise ValueError(f"choices {sorted(by_index)} for {count} prompts")
            return [by_index[at] for at in range(count)]
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
            raise InputError(
                f"kd.teacher_url: {self.url} replied without one choice per prompt ({error}); serve the "
                "teacher with vLLM's OpenAI-compatible server"
            ) from error

    def _parse(self, choice: dict, prompt_ids: list[int], answer_ids: list[int]) -> Positions:
        """The answer's positions (the prompt's are not read); one that lacks its own token or holds a
        logprob that is not finite and <= 0 is marked bad (skipped by the alignment, counted in the
        summary)."""
        try:
            scored = choice["prompt_logprobs"]
            if len(scored) != len(prompt_ids) + len(answer_ids):
                raise ValueError(f"{len(scored)} positions for {len(prompt_ids) + len(answer_ids)} tokens")
            table = token_bytes(self.tokens.tokenizer)
            positions, bad = [], set()
            for at, (index, position) in enumerate(zip(answer_ids, scored[len(prompt_ids) :], strict=True)):
                try:
                    own, top = ranked_logprobs(position, index, self.top_k)
                except (BadPosition, KeyError, TypeError, ValueError, AttributeError):
                    own, top = 0.0, []
                    bad.add(at)
                positions.append(table.position(index, own, top))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
            raise InputError(
                f"kd.teacher_url: {self.url} replied without usable prompt_logprobs ({error}); serve the "
                "teacher with vLLM's OpenAI-compatible server, which returns them for `prompt_logprobs`"
            ) from error
        return Positions(positions, bad)


def ranked_logprobs(position: dict, own_id: int, top_k: int) -> tuple[float, list[tuple[int, float]]]:
    """(the own token's logprob, the top_k (id, logprob) most likely first) of one prompt_logprobs
    position; raises where a logprob is not a finite number <= 0 or the own token is missing."""
    values = {int(key): logprob_field(entry["logprob"]) for key, entry in position.items()}
    return values[own_id], sorted(values.items(), key=itemgetter(1), reverse=True)[:top_k]


MAX_RETRY_AFTER_S = 60.0

# Statuses a server answers a list of prompts with when it takes one prompt per request only.
LIST_REFUSALS = (400, 413, 422)


class PromptListRefused(Exception):
    """The server refused a request holding several prompts."""


def retry_wait(error: BaseException, attempt: int) -> float | None:
    """Seconds to wait before retrying after `error` on try `attempt`, or None when retrying cannot help.

    Busy (429, 503): the server's Retry-After, else backoff from 1 s. A server error (500, 502, 504), a
    connection refused, reset or closed (a server restarting), or a reply past the deadline: backoff from
    0.5 s. Any other status (the request itself is wrong) and a reply that is not JSON: never.
    """
    if isinstance(error, StatusError):
        if error.code in (429, 503):
            after = retry_after(error.headers)
            # A Retry-After of an hour (or NaN) would stall training: wait at most MAX_RETRY_AFTER_S.
            if after is not None and not after <= MAX_RETRY_AFTER_S:
                after = MAX_RETRY_AFTER_S
            return backoff(attempt, 1.0, 30.0, after)
        return backoff(attempt, 0.5, 10.0) if error.code in (500, 502, 504) else None
    if isinstance(error, ValueError):
        return None
    return backoff(attempt, 0.5, 10.0)
