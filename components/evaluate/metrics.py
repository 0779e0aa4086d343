"""Text metrics of predictions against references, on fixed strings, for English and Chinese alike.

ROUGE-1/2: n-gram overlap F1; ROUGE-L: longest-common-subsequence F1 (P = LCS/|pred|, R = LCS/|ref|,
    F1 = 2PR/(P+R)). Tokens: words for alphabetic scripts (lowercased), single characters for CJK,
    or jieba words for Chinese with `zh_tokenizer="jieba"`. Averaged over samples.
BLEU: sacrebleu corpus BLEU with its `zh` tokenizer (splits CJK characters, 13a-style for the rest)
    and effective order, so one-word answers still score; reported on a 0-1 scale (score / 100).
chrF: sacrebleu corpus chrF (character n-grams: language-agnostic), 0-1 scale.
exact match: prediction == reference after stripping surrounding whitespace.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Literal

ZhTokenizer = Literal["char", "jieba"]

# CJK ideographs (incl. extension A and compatibility), kana and hangul: scripts without spaces between words.
_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_CHAR_TOKENS = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")
_WORD = re.compile(r"\w")


def tokenize(text: str, zh_tokenizer: ZhTokenizer = "char") -> list[str]:
    """Lowercased word tokens; CJK text as characters ("char") or jieba words; punctuation dropped."""
    text = text.lower()
    if zh_tokenizer == "jieba" and re.search(rf"[{_CJK}]", text):
        import jieba

        return [token for token in jieba.lcut(text) if _WORD.search(token)]
    return _CHAR_TOKENS.findall(text)


def _f1(overlap: int, predicted: int, reference: int) -> float:
    if overlap == 0:
        return 0.0
    precision, recall = overlap / predicted, overlap / reference
    return 2 * precision * recall / (precision + recall)


def rouge_n(prediction: list[str], reference: list[str], n: int) -> float:
    pred = Counter(tuple(prediction[i : i + n]) for i in range(len(prediction) - n + 1))
    ref = Counter(tuple(reference[i : i + n]) for i in range(len(reference) - n + 1))
    return _f1(sum((pred & ref).values()), sum(pred.values()), sum(ref.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Longest common subsequence by dynamic programming, one row at a time (O(|a|·|b|) time, O(|b|) memory)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: list[str], reference: list[str]) -> float:
    return _f1(lcs_length(prediction, reference), len(prediction), len(reference))


def exact_match(prediction: str, reference: str) -> bool:
    return prediction.strip() == reference.strip()


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    from sacrebleu.metrics import BLEU

    metric = BLEU(tokenize="zh", effective_order=True)
    return metric.corpus_score(list(predictions), [list(references)]).score / 100


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    from sacrebleu.metrics import CHRF

    return CHRF().corpus_score(list(predictions), [list(references)]).score / 100


def text_metrics(
    predictions: Sequence[str], references: Sequence[str], zh_tokenizer: ZhTokenizer = "char"
) -> dict[str, float]:
    """exact_match, rouge1, rouge2, rouge_l, bleu, chrf of predictions against same-length references."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return {}
    pairs = [
        (tokenize(p, zh_tokenizer), tokenize(r, zh_tokenizer))
        for p, r in zip(predictions, references, strict=True)
    ]
    count = len(pairs)
    return {
        "exact_match": sum(exact_match(p, r) for p, r in zip(predictions, references, strict=True)) / count,
        "rouge1": sum(rouge_n(p, r, 1) for p, r in pairs) / count,
        "rouge2": sum(rouge_n(p, r, 2) for p, r in pairs) / count,
        "rouge_l": sum(rouge_l(p, r) for p, r in pairs) / count,
        "bleu": bleu(predictions, references),
        "chrf": chrf(predictions, references),
    }


def accuracy(
    predictions: Sequence[str],
    prompts: Sequence[str],
    references: Sequence[str | None],
    checker: Callable[[str, str, str | None], bool | None] | None = None,
) -> float | None:
    """Share of correct answers: by `checker(prompt, answer, reference)` when given (samples it returns
    None for are not counted), else exact match against the reference over the samples that have one;
    None when no sample could be scored."""
    if checker is not None:
        verdicts = [checker(q, p, r) for q, p, r in zip(prompts, predictions, references, strict=True)]
        scored = [bool(v) for v in verdicts if v is not None]
    else:
        scored = [exact_match(p, r) for p, r in zip(predictions, references, strict=True) if r is not None]
    return sum(scored) / len(scored) if scored else None
