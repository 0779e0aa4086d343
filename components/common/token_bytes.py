"""A tokenizer's tokens as the bytes they spell, for the logprobs `bytes` a teacher writes and the
cross-tokenizer alignment the train stage does."""

from __future__ import annotations

import re
from functools import lru_cache

from components.common.logprobs import Alternative, TokenLogprob


@lru_cache(maxsize=1)
def byte_symbols() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which byte-level BPE vocabularies are spelled in.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are shifted to chr(256 + n).
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class TokenBytes:
    """A tokenizer's id <-> bytes tables, read once from its vocabulary.

    Byte-level BPE vocabularies (GPT-2, Qwen, Llama 3) spell bytes with GPT-2's printable table; sentencepiece
    ones (Llama 2, Mistral) use U+2581 for a space and <0xNN> for raw bytes. Special tokens stand for their
    own text.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._first: dict[bytes, int | None] = {}
        self._spelled: dict[int, tuple[str, list[int]]] = {}
        inverse = {symbol: byte for byte, symbol in byte_symbols().items()}
        vocab = tokenizer.get_vocab()
        special = set(tokenizer.all_special_ids)
        byte_level = all(all(c in inverse for c in text) for text, i in vocab.items() if i not in special)
        self.of_id: dict[int, bytes] = {}
        for text, index in vocab.items():
            if index in special:
                self.of_id[index] = text.encode()
            elif byte_level:
                self.of_id[index] = bytes(inverse[c] for c in text)
            elif match := _BYTE_FALLBACK.fullmatch(text):
                self.of_id[index] = bytes([int(match[1], 16)])
            else:
                self.of_id[index] = text.replace("\u2581", " ").encode()
        # Special tokens never stand for plain text: a candidate "<|im_end|>" typed as text is not one.
        self.id_of: dict[bytes, int] = {b: i for i, b in self.of_id.items() if i not in special}
        self.id_of.update({b: i for i, b in self.of_id.items() if i in special and b not in self.id_of})

    def first_id(self, text: bytes) -> int | None:
        """The student token that `text` starts with in the student's own tokenization."""
        if text in self.id_of:
            return self.id_of[text]
        if text not in self._first:
            ids = self.tokenizer(text.decode("utf-8", errors="replace"), add_special_tokens=False)[
                "input_ids"
            ]
            self._first[text] = ids[0] if ids else None
        return self._first[text]

    def entry_bytes(self, entry: Alternative | TokenLogprob) -> bytes:
        """The bytes of one logprobs position or alternative ("token_id:N" tokens are ids of this
        tokenizer)."""
        if entry.bytes is not None:
            return bytes(entry.bytes)
        if entry.token.startswith("token_id:") and entry.token[9:].isdigit():
            return self.of_id.get(int(entry.token[9:]), b"")
        return entry.token.encode()

    def spelled(self, index: int) -> tuple[str, list[int]]:
        """Token `index` as text (a part of a character written as escapes, as OpenAI does) and its exact
        bytes as the logprobs `bytes` list; empty for an id outside the vocabulary. The list is shared by
        every entry of that token (a scored batch holds thousands): never change it in place."""
        known = self._spelled.get(index)
        if known is None:
            spelled = self.of_id.get(index, b"")
            known = (spelled.decode("utf-8", errors="backslashreplace"), list(spelled))
            if index in self.of_id:  # ids from a reply are untrusted: only the vocabulary's are kept
                self._spelled[index] = known
        return known

    def alternative(self, index: int, logprob: float) -> Alternative:
        """Token `index` as a logprobs alternative."""
        text, spelled = self.spelled(index)
        return Alternative(text, logprob, spelled)

    def position(self, index: int, logprob: float, top: list[tuple[int, float]]) -> TokenLogprob:
        """Answer token `index` with its logprob and its top (id, logprob) alternatives."""
        text, spelled = self.spelled(index)
        return TokenLogprob(text, logprob, spelled, [self.alternative(i, value) for i, value in top])


@lru_cache(maxsize=4)
def token_bytes(tokenizer) -> TokenBytes:
    return TokenBytes(tokenizer)
