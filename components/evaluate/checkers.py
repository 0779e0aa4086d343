"""Answer checkers for `Config.checker` ("components.evaluate.checkers:<name>"), for tasks whose answers
can be checked beyond string equality with the teacher:

    function(prompt, answer, reference) -> True (right), False (wrong) or None (cannot tell: not counted)

`reference` is the dataset's gold answer when the record has one, else None.
"""

from __future__ import annotations

import re

_REVERSE = re.compile(r"Reverse the letters of:\s*(\S+)")
# Integers and decimals with optional sign and thousands separators: -1,234.5
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def reverse_letters(prompt: str, answer: str, reference: str | None = None) -> bool | None:
    """The demo task: "Reverse the letters of: <word>" is answered by the word backwards."""
    match = _REVERSE.search(prompt)
    if not match:
        return None
    return answer.strip() == match.group(1)[::-1]


def final_number(prompt: str, answer: str, reference: str | None = None) -> bool | None:
    """Math word problems (GSM8K style, reference "... #### 72"): the last number in the answer equals the
    last number in the reference; None for records without a numeric reference."""
    expected = _last_number(reference or "")
    if expected is None:
        return None
    return _last_number(answer) == expected


def _last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    if not found:
        return None
    return float(found[-1].replace(",", ""))
