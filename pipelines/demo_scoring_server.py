"""A loopback server scoring tokens the way vLLM's /v1/completions does with `prompt_logprobs`, after a
fixed latency, with made-up but well-formed logprobs: the served-teacher scorer's bench and tests.

    python -m pipelines.demo_scoring_server --port 8000 --vocab-size 300 [--latency 0.5]

    app, stats = scoring_app(vocab_size=64, latency_s=0.2, faults=[503, 500])
    with ServerThread(app) as server:
        HttpScorer(server.url, ...).entries(prompts, answers)
    stats.requests, stats.prompts, stats.most_in_flight

Each prompt (one list of token ids, or a list of such lists) gets a choice whose position t holds its own
token at logprob -1 and the next `prompt_logprobs - 1` ids at -2, -3, ..., each with its rank and a
made-up decoded_token: the entries vLLM sends. The latency is per request, however many prompts it holds,
as on a GPU server with room for the batch, and counts from the request's arrival: building the reply is
part of it, as a remote server's own work is part of the time its client waits. `faults` are statuses
answered to the first requests, one each, 429 and 503 with a Retry-After of `retry_after_s`.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass

from aiohttp import web


@dataclass
class ScoringStats:
    """What the server saw: requests taken up, prompts scored, and the most requests in flight at once."""

    requests: int = 0
    prompts: int = 0
    in_flight: int = 0
    most_in_flight: int = 0


def scored_positions(ids: list[int], top_k: int, vocab_size: int) -> list[dict | None]:
    """prompt_logprobs for `ids`: nothing for the first token, then own token first, k - 1 others after."""
    positions: list[dict | None] = [None]
    for own in ids[1:]:
        others = [(own + step) % vocab_size for step in range(1, top_k)]
        position = {str(own): {"logprob": -1.0, "rank": 1, "decoded_token": f"t{own}"}}
        position.update(
            {
                str(i): {"logprob": -2.0 - r, "rank": r + 2, "decoded_token": f"t{i}"}
                for r, i in enumerate(others)
            }
        )
        positions.append(position)
    return positions


def scoring_app(
    vocab_size: int,
    latency_s: float = 0.0,
    faults: list[int] | None = None,
    retry_after_s: float = 0.2,
    drop_a_choice: bool = False,
) -> tuple[web.Application, ScoringStats]:
    stats, pending_faults = ScoringStats(), list(faults or [])

    async def completions(request: web.Request) -> web.Response:
        arrived = asyncio.get_running_loop().time()
        body = await request.json()
        stats.requests += 1
        if pending_faults:
            status = pending_faults.pop(0)
            headers = {"Retry-After": f"{retry_after_s:g}"} if status in (429, 503) else {}
            return web.json_response({"error": f"injected {status}"}, status=status, headers=headers)
        prompts = body["prompt"]
        if prompts and isinstance(prompts[0], int):
            prompts = [prompts]
        stats.in_flight += 1
        stats.most_in_flight = max(stats.most_in_flight, stats.in_flight)
        try:
            top_k = int(body.get("prompt_logprobs") or 1)
            choices = [
                {"index": at, "text": "", "prompt_logprobs": scored_positions(ids, top_k, vocab_size)}
                for at, ids in enumerate(prompts)
            ]
            reply = web.json_response(
                {"object": "text_completion", "choices": choices[:-1] if drop_a_choice else choices}
            )
            await asyncio.sleep(max(0.0, latency_s - (asyncio.get_running_loop().time() - arrived)))
        finally:
            stats.in_flight -= 1
        stats.prompts += len(prompts)
        return reply

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    return app, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--vocab-size", type=int, required=True, help="the scored tokenizer's size")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each request")
    args = parser.parse_args()
    app, _ = scoring_app(args.vocab_size, args.latency)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    main()
