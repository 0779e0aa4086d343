"""What the report's tables say, checked on the HTML text (the browser test checks that it renders)."""

from __future__ import annotations

import html
import re

from components.evaluate.report import (
    fmt,
    metrics_table,
    reference_section,
    samples_table,
    shorten,
    teacher_comparison,
)


def row(table: str, label: str) -> str:
    return re.search(rf"<tr><td>{re.escape(html.escape(label))}</td>(.*?)</tr>", table).group(1)


def test_the_better_student_is_highlighted_per_quality_metric_only():
    table = metrics_table(
        {
            "untrained_rouge_l": 0.1,
            "distilled_rouge_l": 0.8,
            "untrained_perplexity": 9.0,
            "distilled_perplexity": 30.0,
            "untrained_tokens_per_s": 10.0,
            "distilled_tokens_per_s": 20.0,
            "teacher_accuracy": 0.9,
        }
    )
    assert (
        row(table, "ROUGE-L F1")
        == "<td class='n'>0.100</td><td class='n best'>0.800</td><td class='n'>—</td>"
    )
    assert "<td class='n best'>9</td>" in row(table, "Perplexity on the teacher's answers")  # lower is better
    assert "best" not in row(table, "Generation speed (tokens/s)")  # speed depends on the machine's load
    assert (
        "Accuracy (reference or checker)" in table and "BLEU" not in table
    )  # rows without values are left out


def test_samples_show_empty_answers_and_escape_markup():
    sample = {
        "prompt": "<script>x</script>",
        "teacher": "a & b",
        "untrained": "",
        "distilled": "a & b",
        "untrained_match": False,
        "distilled_match": True,
        "reference": None,
    }
    table = samples_table([sample])
    assert "<script>" not in table and "&lt;script&gt;" in table and "a &amp; b" in table
    assert "(empty)" in table and "Reference" not in table and "Judge" not in table


def test_number_formats():
    assert fmt(0.8751, "pct") == "87.5%" and fmt(None, "frac") == "—"
    assert fmt(7.6e9, "count") == "7.60 B" and fmt(329472, "count") == "0.33 M"
    assert fmt(15.2 * 2**30, "bytes") == "15.20 GiB" and fmt(1320592, "bytes") == "1.26 MiB"


def test_long_paths_are_shortened_for_display():
    long = "/tmp/demo/pipeline_root/llm-distillation-2026-11-23-11-17-43-926173/merge-adapter/merged"
    assert shorten(long) == "…/merge-adapter/merged"
    assert shorten("data/merged") == "data/merged" and shorten("openai/demo-teacher") == "openai/demo-teacher"


def test_long_answers_are_cut_in_the_table_only():
    sample = {
        "prompt": "p",
        "teacher": "x" * 700,
        "untrained": "",
        "distilled": "y",
        "untrained_match": False,
        "distilled_match": False,
        "reference": None,
    }
    table = samples_table([sample])
    assert (
        "x" * 600 + "</bdi><span class='note'>… (100 more characters)</span>" in table
        and "x" * 601 not in table
    )


def test_speed_and_size_are_compared_with_a_local_teacher():
    metrics = {
        "distilled_tokens_per_s": 300.0,
        "teacher_tokens_per_s": 100.0,
        "distilled_size_bytes": 1e6,
        "teacher_size_bytes": 2.5e7,
    }
    sentence = teacher_comparison(metrics)
    assert (
        "the distilled student generates 3× as many tokens per second and is 25× smaller on disk" in sentence
    )
    only_size = teacher_comparison({"distilled_size_bytes": 1.3e6, "teacher_size_bytes": 15.2 * 2**30})
    assert "the distilled student is 12,555× smaller on disk" in only_size
    assert teacher_comparison({"distilled_tokens_per_s": 300.0}) == ""


def test_reference_metrics_cover_every_system_on_the_referenced_records_only():
    from components.evaluate.stage import reference_metrics

    answers = {"untrained": ["x", "y", "z"], "distilled": ["cba", "god", "q"], "teacher": ["cba", "dog", "w"]}
    metrics = reference_metrics(answers, ["cba", "god", None], "char")
    assert metrics["num_reference_samples"] == 2
    assert metrics["distilled_ref_exact_match"] == 1.0 and metrics["teacher_ref_exact_match"] == 0.5
    assert metrics["untrained_ref_rouge_l"] == 0.0
    assert reference_metrics(answers, [None, None, None], "char") == {}

    table = reference_section(metrics)
    assert "Against the reference answers" in table and "on the 2 test records that have one" in table
    assert "<td class='n'>50.0%</td>" in row(table, "Exact match with the reference")  # the teacher's


def test_reference_metrics_can_be_gated_on():
    from components.evaluate.config import is_gate_metric

    assert is_gate_metric("distilled_ref_rouge_l") and is_gate_metric("teacher_ref_exact_match")
    assert not is_gate_metric("distilled_ref_perplexity") and not is_gate_metric("student_rouge_l")
