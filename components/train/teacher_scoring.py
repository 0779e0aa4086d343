"""A teacher that scores given text in its own tokens: a local model, or a vLLM server over HTTP.

Both return, for each (prompt, answer) pair (the answer as text, or as token ids when the student shares
the teacher's vocabulary: a sample need not be valid UTF-8 text), the teacher's top-k distribution at each of its answer
tokens as OpenAI logprobs entries (`token`, `bytes`, `logprob`, `top_logprobs`): the same form the API
teacher stores in the records, so cross_tokenizer.align maps either onto any student's tokens.

The HTTP scorer speaks vLLM's OpenAI-compatible /v1/completions with `prompt_logprobs`: the prompt is the
token ids of prompt + answer, `max_tokens: 1`, and `choices[0].prompt_logprobs[t]` maps token ids (as
strings) to `{"logprob": ...}` for the top k at position t plus the prompt's own token there. The server's
reply is untrusted: a reply of the wrong length or shape is an error naming the server, never guessed at.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
from collections.abc import Sequence

import torch

from components.common.deadline_http import DeadlineExceeded, post
from components.common.errors import InputError
from components.common.logprobs import BadPosition, Positions, checked, logprob_field
from components.common.token_bytes import token_bytes
from components.train.data import render_ids
from components.train.modeling import backbone, padded_attention


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
    """A teacher served by vLLM's OpenAI-compatible server, scoring given tokens (prompt_logprobs)."""

    def __init__(self, url: str, model: str, tokenizer, top_k: int, timeout_s: float = 120.0):
        self.url = url.rstrip("/") + "/v1/completions"
        self.model, self.tokens, self.top_k = model, TeacherTokens(tokenizer), top_k
        self.timeout_s = timeout_s  # for the whole call: a server dripping its reply cannot hold it

    def entries(
        self, prompts: Sequence[Sequence[dict]], answers: Sequence[str | list[int]]
    ) -> list[Positions]:
        return [self._one(prompt, answer) for prompt, answer in zip(prompts, answers, strict=True)]

    def _one(self, prompt: Sequence[dict], answer: str | list[int]) -> Positions:
        prompt_ids, answer_ids = self.tokens(prompt, answer)
        body = {
            "model": self.model,
            "prompt": prompt_ids + answer_ids,
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": self.top_k,
        }
        headers = {"Content-Type": "application/json"}
        try:
            reply = json.loads(post(self.url, json.dumps(body).encode(), headers, self.timeout_s))
        except DeadlineExceeded:
            raise InputError(
                f"kd.teacher_url: {self.url} did not score the tokens within kd.teacher_timeout_s="
                f"{self.timeout_s:g}; check that the server runs and is not overloaded, or raise it"
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as error:
            raise InputError(f"kd.teacher_url: {self.url} did not score the tokens: {error}") from error
        return self._parse(reply, prompt_ids, answer_ids)

    def _parse(self, reply: dict, prompt_ids: list[int], answer_ids: list[int]) -> Positions:
        """The answer's positions; one that lacks its own token or holds a logprob that is not finite
        and <= 0 is marked bad (skipped by the alignment, counted in the summary)."""
        try:
            scored = reply["choices"][0]["prompt_logprobs"]
            if len(scored) != len(prompt_ids) + len(answer_ids):
                raise ValueError(f"{len(scored)} positions for {len(prompt_ids) + len(answer_ids)} tokens")
            top, own, bad = [], [], set()
            for at, (index, position) in enumerate(zip(answer_ids, scored[len(prompt_ids) :], strict=True)):
                try:
                    table = {int(i): logprob_field(v["logprob"]) for i, v in position.items()}
                    lp = table[index]
                except (BadPosition, KeyError, TypeError, ValueError, AttributeError):
                    table, lp = {}, 0.0
                    bad.add(at)
                ranked = sorted(table.items(), key=lambda item: -item[1])
                top.append(ranked[: self.top_k])
                own.append(lp)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
            raise InputError(
                f"kd.teacher_url: {self.url} replied without usable prompt_logprobs ({error}); serve the "
                "teacher with vLLM's OpenAI-compatible server, which returns them for `prompt_logprobs`"
            ) from error
        return answer_entries(answer_ids, top, own, self.tokens.tokenizer, bad)
