"""Text metrics on fixed strings with values worked out by hand, English and Chinese."""

from __future__ import annotations

import pytest

from components.evaluate.checkers import final_number, reverse_letters
from components.evaluate.metrics import (
    accuracy,
    bleu,
    chrf,
    exact_match,
    lcs_length,
    rouge_l,
    rouge_n,
    text_metrics,
    tokenize,
)

CAT = "The cat sat on the mat."
CAT_LAY = "the cat lay on the mat"


def test_tokenize_splits_words_lowercase_and_chinese_into_characters_or_jieba_words():
    assert tokenize(CAT) == ["the", "cat", "sat", "on", "the", "mat"]
    assert tokenize("今天天气很好, ok!") == ["今", "天", "天", "气", "很", "好", "ok"]
    assert tokenize("今天天气很好, ok!", zh_tokenizer="jieba") == ["今天天气", "很", "好", "ok"]
    assert tokenize("", zh_tokenizer="jieba") == []


def test_rouge_on_english_words():
    pred, ref = tokenize(CAT), tokenize(CAT_LAY)
    # 6 tokens each; unigram overlap {the×2, cat, on, mat} = 5 -> P = R = F1 = 5/6
    assert rouge_n(pred, ref, 1) == pytest.approx(5 / 6)
    # bigrams: the-cat, on-the, the-mat shared of 5 each -> 3/5
    assert rouge_n(pred, ref, 2) == pytest.approx(3 / 5)
    # LCS "the cat on the mat" = 5 -> 5/6
    assert lcs_length(pred, ref) == 5
    assert rouge_l(pred, ref) == pytest.approx(5 / 6)


def test_rouge_on_chinese_characters_and_jieba_words():
    pred, ref = tokenize("今天天气很好"), tokenize("今天天气不错")
    assert rouge_n(pred, ref, 1) == pytest.approx(4 / 6)  # 今 天 天 气 shared
    assert rouge_n(pred, ref, 2) == pytest.approx(3 / 5)  # 今天 天天 天气 shared
    assert rouge_l(pred, ref) == pytest.approx(4 / 6)
    words = tokenize("今天天气很好", "jieba"), tokenize("今天天气不错", "jieba")
    # jieba: 今天天气|很|好 vs 今天天气|不错 -> 1 shared word, P = 1/3, R = 1/2, F1 = 2·(1/6)/(5/6) = 0.4
    assert rouge_n(*words, 1) == pytest.approx(0.4)


def test_rouge_f1_with_unequal_lengths():
    # pred "a b c d", ref "a c": LCS 2 -> P = 2/4, R = 2/2, F1 = 2·0.5·1/1.5 = 2/3
    assert rouge_l(["a", "b", "c", "d"], ["a", "c"]) == pytest.approx(2 / 3)
    assert rouge_n(["a"], ["b"], 1) == 0.0
    assert rouge_n(["a"], ["a"], 2) == 0.0  # no bigrams at all: nothing to match (as rouge-score does)


def test_bleu_uses_the_zh_tokenizer_and_effective_order():
    assert bleu([CAT], [CAT]) == pytest.approx(1.0)
    # characters 今天天气很好 vs 今天天气不错: precisions 4/6, 3/5, 2/4, 1/3, BP 1
    # -> geometric mean (4/6·3/5·2/4·1/3)^(1/4) = (1/15)^(1/4) = 0.5081
    assert bleu(["今天天气很好"], ["今天天气不错"]) == pytest.approx((1 / 15) ** 0.25, abs=1e-4)
    # one-word answers: half of them right -> unigram precision 1/2, higher orders ignored
    assert bleu(["cba", "abc"], ["cba", "cba"]) == pytest.approx(0.5)


def test_chrf_is_character_based_and_works_for_chinese():
    assert chrf(["今天天气很好"], ["今天天气很好"]) == pytest.approx(1.0)
    assert chrf(["今天天气很好"], ["今天天气不错"]) == pytest.approx(0.35, abs=1e-4)
    assert chrf(["abc"], ["xyz"]) == 0.0


def test_exact_match_ignores_surrounding_whitespace_only():
    assert exact_match("  olleh\n", "olleh")
    assert not exact_match("olle h", "olleh")
    assert not exact_match("Olleh", "olleh")


def test_text_metrics_averages_over_samples():
    scores = text_metrics(["olleh", "dlrow", "x y"], ["olleh", "world", "x z"])
    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert scores["rouge1"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert scores["rouge_l"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert set(scores) == {"exact_match", "rouge1", "rouge2", "rouge_l", "bleu", "chrf"}
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        text_metrics(["a", "b"], ["a"])


def test_accuracy_by_reference_or_by_checker():
    prompts = ["Reverse the letters of: abc", "Reverse the letters of: dog", "Say hi"]
    answers = ["cba", "dgo", "hi"]
    assert accuracy(answers, prompts, ["cba", None, None]) == 1.0  # only the referenced sample counts
    assert accuracy(answers, prompts, [None, None, None]) is None
    # the checker cannot tell for "Say hi": 1 right of the 2 it can check
    assert accuracy(answers, prompts, [None, None, None], checker=reverse_letters) == 0.5
    assert reverse_letters("Reverse the letters of: 你好", " 好你 ", None)
    assert reverse_letters("Copy the letters of: abc", "abc", None) is None


def test_final_number_checker_compares_the_last_numbers():
    reference = "She sells 16 - 3 - 4 = 9 eggs for $2 each: 9 * 2 = 18.\n#### 18"
    assert final_number("q", "So she makes $18 every day.", reference)
    assert final_number("q", "She makes 1,800 cents, that is 18.0 dollars", reference)
    assert not final_number("q", "The answer is 18, no wait, 20", reference)
    assert final_number("q", "42", None) is None and final_number("q", "42", "no number") is None
    assert accuracy(["18", "7", "x"], ["q"] * 3, [reference, "#### -7", None], checker=final_number) == 0.5
