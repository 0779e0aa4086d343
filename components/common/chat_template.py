"""Every prompt goes through the tokenizer's chat template. Qwen v1 (Qwen/Qwen-7B-Chat, Qwen-1_8B) and many
base models ship none in tokenizer_config.json: a stage refuses such a tokenizer in one line naming
`chat_template`, or, with `chat_template: chatml`, gives it ChatML, the turn format Qwen models are trained
on (<|im_start|>role\\n...<|im_end|>)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from components.common.errors import InputError
from components.common.tiny_model import CHATML_TEMPLATE

log = logging.getLogger(__name__)

# model: the tokenizer's own template, refused when it has none; chatml: ChatML when it has none.
ChatTemplate = Literal["model", "chatml"]


def ensure_chat_template(tokenizer, folder: str | Path, choice: ChatTemplate, field: str) -> None:
    """Give `tokenizer` (loaded from `folder`) a chat template, or refuse it naming `field`."""
    if getattr(tokenizer, "chat_template", None):
        return
    if choice == "chatml":
        tokenizer.chat_template = CHATML_TEMPLATE
        log.info("%s: the tokenizer has no chat template; using ChatML (%s: chatml)", folder, field)
        return
    raise InputError(
        f"{field}: the tokenizer of {folder} has no chat_template (Qwen v1 and base models ship none); set "
        f"{field}: chatml to use ChatML, or add a chat_template to its tokenizer_config.json"
    )
