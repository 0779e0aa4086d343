"""Per-token log-probabilities: the one shape every teacher writes and the train stage reads.

OpenAI's chat.completions `logprobs.content`, one position per answer token, in order:

    {"token": "ol", "logprob": -0.01, "bytes": [111, 108],
     "top_logprobs": [{"token": "ol", "logprob": -0.01, "bytes": [111, 108]}, {"token": "o", ...}, ...]}

`bytes` are the token's exact UTF-8 bytes: a token that holds part of a multi-byte character (a Chinese
character split over two tokens) has no text of its own, and only its bytes let the train stage spell the
answer again. A token written "token_id:N" (vLLM's return_tokens_as_token_ids) is id N of the tokenizer
the reader knows. The teacher stage writes them to logprobs.parquet beside train.jsonl
(components/common/logprobs_file.py, schema LOGPROBS_SCHEMA).

Both ends validate (`read_positions`): the values come from a teacher's reply or a bucket, so a logprob
that is not finite and <= 0, `bytes` that are not a short list of ints 0..255, or more alternatives than
asked make the position bad. A bad position is counted and skipped, never trained on: its span still
lines the text up when its own bytes are readable, else the positions from it on are dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

LOGPROBS_SCHEMA = 1
# OpenAI's and the teacher config's bound on top_logprobs.
MAX_ALTERNATIVES = 20
# The longest token of any known vocabulary is far shorter; a longer one is not a token.
MAX_TOKEN_BYTES = 256
# Servers round each logprob; k alternatives that hold all the mass may add up to a little over 1.
PROBABILITY_SLACK = 1e-3


class BadPosition(ValueError):
    """A position whose values cannot be trained on (the message says which field)."""


@dataclass(frozen=True)
class Alternative:
    token: str
    logprob: float
    bytes: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"token": self.token, "logprob": self.logprob, "bytes": self.bytes}


@dataclass(frozen=True)
class TokenLogprob:
    """One answer position: the token the teacher gave and its alternatives, most likely first."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[Alternative] = field(default_factory=list)

    @property
    def candidates(self) -> list[Alternative]:
        """The alternatives, or the given token alone when none were asked for."""
        return self.top_logprobs or [Alternative(self.token, self.logprob, self.bytes)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "logprob": self.logprob,
            "bytes": self.bytes,
            "top_logprobs": [alternative.to_dict() for alternative in self.top_logprobs],
        }


@dataclass
class Positions:
    """What `read_positions` kept: every position whose span is known, and which of them are bad."""

    positions: list[TokenLogprob]
    bad: set[int] = field(default_factory=set)  # indices into `positions` never trained on
    dropped: int = 0  # positions past one whose own bytes were unreadable
    first_problem: str = ""  # what made the first bad position bad, for the log

    @property
    def bad_count(self) -> int:
        return len(self.bad) + self.dropped


def token_bytes_field(value: Any) -> list[int] | None:
    """`bytes` as a list of ints 0..255, or None when absent; anything else raises BadPosition."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_TOKEN_BYTES:
        raise BadPosition(f"bytes must be a list of at most {MAX_TOKEN_BYTES} ints 0..255")
    if not all(type(b) is int and 0 <= b <= 255 for b in value):
        raise BadPosition("bytes must hold ints 0..255 only")
    return value


def logprob_field(value: Any) -> float:
    # A float in range, as servers send, passes on the first test: this runs once per candidate.
    if type(value) is float and -math.inf < value <= 0.0:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadPosition(f"logprob must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value > 0:
        raise BadPosition(f"logprob must be finite and <= 0, got {value}")
    return value


def token_field(value: Any) -> str:
    if not isinstance(value, str):
        raise BadPosition("token must be a string")
    return value


def span_of(raw: Any) -> tuple[str, list[int] | None]:
    """(token, bytes) of a raw position: what its place in the text needs; raises when unreadable."""
    if not isinstance(raw, dict):
        raise BadPosition("a position must be an object")
    return token_field(raw.get("token")), token_bytes_field(raw.get("bytes"))


def read_alternative(raw: Any) -> Alternative:
    token, token_bytes = span_of(raw)
    return Alternative(token, logprob_field(raw.get("logprob")), token_bytes)


def read_position(raw: Any, max_alternatives: int) -> TokenLogprob:
    """One validated position; raises BadPosition naming the field."""
    token, token_bytes = span_of(raw)
    alternatives = raw.get("top_logprobs") or []
    if not isinstance(alternatives, list):
        raise BadPosition("top_logprobs must be a list")
    if len(alternatives) > max_alternatives:
        raise BadPosition(f"{len(alternatives)} alternatives, more than the {max_alternatives} asked")
    position = TokenLogprob(
        token, logprob_field(raw.get("logprob")), token_bytes, [read_alternative(a) for a in alternatives]
    )
    if sum(math.exp(a.logprob) for a in position.top_logprobs) > 1 + PROBABILITY_SLACK:
        raise BadPosition("the top_logprobs' probabilities add up to more than 1")
    return position


def read_positions(raw: Any, max_alternatives: int = MAX_ALTERNATIVES) -> Positions:
    """The positions of a stored or received logprobs list, bad ones marked (see the module doc)."""
    if not isinstance(raw, list):
        return Positions([], dropped=1, first_problem="logprobs must be a list of positions")
    read = Positions([])
    for index, item in enumerate(raw):
        try:
            read.positions.append(read_position(item, max_alternatives))
        except BadPosition as problem:
            read.first_problem = read.first_problem or f"position {index}: {problem}"
            try:
                token, token_bytes = span_of(item)
            except BadPosition:
                read.dropped = len(raw) - index
                break
            read.bad.add(len(read.positions))
            read.positions.append(TokenLogprob(token, 0.0, token_bytes))
    return read


def usable(position: TokenLogprob) -> bool:
    """A position made in this process (a local model's numbers) holds only finite logprobs <= 0."""
    values = [position.logprob, *(a.logprob for a in position.top_logprobs)]
    return all(math.isfinite(v) and v <= 0 for v in values)


def checked(positions: list[TokenLogprob], bad: set[int] | None = None) -> Positions:
    """`positions` with the unusable ones (and `bad`, found unusable earlier) marked bad."""
    return Positions(positions, {i for i, p in enumerate(positions) if not usable(p)} | (bad or set()))


def valid_prefix(raw: Any, max_alternatives: int) -> tuple[list[TokenLogprob], int, str]:
    """The positions before the first bad one, how many were left out and why: what a teacher stores,
    so that every stored position is valid and the stored ones still spell the answer's start."""
    read = read_positions(raw, max_alternatives)
    end = min(read.bad, default=len(read.positions))
    return read.positions[:end], (len(raw) if isinstance(raw, list) else 1) - end, read.first_problem
