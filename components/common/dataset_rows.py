"""Dataset rows as chat: one row of a supported format becomes the prompt messages and the row's own
answer (its reference). The teacher stage reads its dataset with these, and the eval stage its validation
file, so a row is put to a model the same way in both.

Formats (one JSON object each):
    prompts    {"prompt": "..."}; optional "system" and "reference"
    alpaca     {"instruction": "...", "input": "...", "output": "..."}; an input of whitespace alone is left
               out, the output is the reference
    sharegpt   {"conversations": [{"from": "human"|"gpt"|"system", "value": "..."}], "system": "..."}; the
               first assistant turn after the last user turn is the reference
    messages   {"messages": [{"role": ..., "content": ...}]}; "reference", or else the first assistant turn
               after the last user turn, is the reference

Every error is one line starting with `where` (file and line, or row) and naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components.common.errors import InputError
from components.common.records import validate_messages

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}
# The key that tells each format, in the order they are tried: a sharegpt row may also hold "messages".
FORMAT_KEYS = (
    ("conversations", "sharegpt"),
    ("instruction", "alpaca"),
    ("messages", "messages"),
    ("prompt", "prompts"),
)
FORMATS_SHOWN = "prompt, messages, instruction (alpaca) or conversations (sharegpt)"


@dataclass
class ChatRow:
    """A row as chat: the messages up to the last user turn, and the row's own answer, if any."""

    messages: list[dict[str, str]]
    reference: str | None


def row_format(obj: dict[str, Any]) -> str | None:
    """The format the row's keys tell, or None when none of FORMAT_KEYS is there."""
    return next((fmt for key, fmt in FORMAT_KEYS if key in obj), None)


def read_prompt_row(obj: dict[str, Any], where: str) -> ChatRow:
    if "messages" in obj and "prompt" not in obj:
        return read_messages_row(obj, where)
    messages = _with_system(obj, [{"role": "user", "content": _text(obj, "prompt", where)}], where)
    return ChatRow(messages, _text(obj, "reference", where, required=False))


def read_alpaca_row(obj: dict[str, Any], where: str) -> ChatRow:
    instruction = _text(obj, "instruction", where)
    extra_input = _text(obj, "input", where, required=False)
    user = f"{instruction}\n\n{extra_input}" if extra_input and extra_input.strip() else instruction
    messages = _with_system(obj, [{"role": "user", "content": user}], where)
    return ChatRow(messages, _text(obj, "output", where, required=False))


def read_sharegpt_row(obj: dict[str, Any], where: str) -> ChatRow:
    turns = obj.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise InputError(f"{where}: field 'conversations' must be a non-empty list of turns")
    messages = _with_system(obj, [], where)
    for i, turn in enumerate(turns):
        role = SHAREGPT_ROLES.get(turn.get("from")) if isinstance(turn, dict) else None
        if role is None or not isinstance(turn.get("value"), str):
            raise InputError(
                f"{where}: conversations[{i}] needs 'from' (one of {', '.join(SHAREGPT_ROLES)}) and a "
                "string 'value'"
            )
        messages.append({"role": role, "content": turn["value"]})
    return _split_reference(messages, where)


def read_messages_row(obj: dict[str, Any], where: str) -> ChatRow:
    row = _split_reference(obj.get("messages"), where)
    return ChatRow(row.messages, _text(obj, "reference", where, required=False) or row.reference)


ROW_READERS = {
    "prompts": read_prompt_row,
    "alpaca": read_alpaca_row,
    "sharegpt": read_sharegpt_row,
    "messages": read_messages_row,
}


def _with_system(obj: dict[str, Any], messages: list[dict[str, str]], where: str) -> list[dict[str, str]]:
    """`messages` after the row's own "system" text, when it has one."""
    system = _text(obj, "system", where, required=False)
    return [{"role": "system", "content": system}, *messages] if system else messages


def _text(obj: dict[str, Any], key: str, where: str, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise InputError(f"{where}: field {key!r} must be a non-empty string")
    return value


def _split_reference(messages: Any, where: str) -> ChatRow:
    """Messages up to the last user turn, and the first assistant answer after it, if any."""
    validate_messages(messages, where)
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        raise InputError(f"{where}: the conversation has no user turn; give it the question as a user turn")
    after = [m for m in messages[last_user + 1 :] if m["role"] == "assistant"]
    return ChatRow([dict(m) for m in messages[: last_user + 1]], after[0]["content"] if after else None)
