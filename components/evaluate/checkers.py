"""Answer checkers for `Config.checker` ("components.evaluate.checkers:<name>"): function(prompt, answer)
-> bool, for tasks whose correct answer can be computed from the prompt."""

from __future__ import annotations

import re

_REVERSE = re.compile(r"Reverse the letters of:\s*(\S+)")


def reverse_letters(prompt: str, answer: str) -> bool:
    """The demo task: "Reverse the letters of: <word>" is answered by the word backwards."""
    match = _REVERSE.search(prompt)
    return bool(match) and answer.strip() == match.group(1)[::-1]
