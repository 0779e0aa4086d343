"""Talk to a model folder (the distilled student, merged, or its adapter folder with --base):

    python -m components.evaluate.chat .demo/.../model            # interactive, the conversation kept
    echo "Reverse the letters of: cat" | python -m components.evaluate.chat .demo/.../model   # a line each

From a terminal each turn sees the earlier ones; from a pipe or file each line is a prompt of its own and
its answer is one line on stdout. Generation is the eval stage's own (chat template, stop tokens, greedy
unless --sample), so the answers are those the report scored.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

from components.common.errors import InputError
from components.common.logs import print_error


@dataclass(frozen=True)
class ChatSettings:
    """What `generate` reads of the eval Config."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    seed: int = 0
    batch_size: int = 1


def prompts(stream: TextIO, interactive: bool) -> Iterator[str]:
    """The user's prompts: non-empty lines, asked for with `> ` on a terminal."""
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = stream.readline()
        if not line:
            return
        if line.strip():
            yield line.strip()


def chat(model, tokenizer, settings: ChatSettings, system: str, stream: TextIO, interactive: bool) -> None:
    from components.evaluate.sampling import generate

    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    for prompt in prompts(stream, interactive):
        messages = [*history, {"role": "user", "content": prompt}]
        answer = generate(model, tokenizer, [messages], settings).answers[0]
        print(answer.replace("\n", " ") if not interactive else answer, flush=True)
        if interactive:
            history = [*messages, {"role": "assistant", "content": answer}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m components.evaluate.chat", description=__doc__.split("\n")[0]
    )
    parser.add_argument("model", help="Hugging Face model folder, or a LoRA adapter folder with --base")
    parser.add_argument("--base", default="", help="the adapter's base model folder")
    parser.add_argument("--system", default="", help="system prompt")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--sample", action="store_true", help="sample (with --temperature) instead of greedy")
    parser.add_argument("--temperature", type=float, default=1.0)
    args = parser.parse_args(argv)
    import torch

    from components.evaluate.sampling import load_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model, tokenizer = load_model(args.model, "auto", device, "model", base_dir=args.base)
    except InputError as error:
        print_error(str(error))
        return 2
    settings = ChatSettings(args.max_new_tokens, args.sample, args.temperature)
    try:
        chat(model, tokenizer, settings, args.system, sys.stdin, sys.stdin.isatty())
    except KeyboardInterrupt:
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
