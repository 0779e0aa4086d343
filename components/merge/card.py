"""The model card (README.md) written next to the merged weights: where the model came from."""

from __future__ import annotations

from typing import Any


def model_card(facts: dict[str, Any]) -> str:
    """Markdown with Hugging Face front matter. `facts` keys: base_model, teacher, dataset, method, steps,
    final_loss, max_logit_diff, tolerance, parameters, dtype; missing or empty ones are left out."""
    front = ["---", "library_name: transformers", "tags:", "  - distillation", "  - kfp-distill"]
    if facts.get("base_model"):
        front.append(f"base_model: {facts['base_model']}")
    front.append("---")
    rows = [
        ("Base (student before distillation)", facts.get("base_model")),
        ("Teacher", facts.get("teacher")),
        ("Training data", facts.get("dataset")),
        ("Method", facts.get("method")),
        ("Training steps", facts.get("steps")),
        ("Final training loss", _number(facts.get("final_loss"))),
        ("Parameters", f"{facts['parameters']:,}" if facts.get("parameters") else None),
        ("Weights dtype", facts.get("dtype")),
        ("Merge check: max logit difference", _merge_check(facts)),
    ]
    table = ["| | |", "|---|---|"] + [
        f"| {name} | {value} |" for name, value in rows if value not in (None, "")
    ]
    body = [
        "# Distilled student",
        "",
        "Produced by the kfp-distill pipeline: a small student fine-tuned on a teacher model's answers, with",
        "any LoRA adapter merged into the base weights, so it loads as a plain Hugging Face model.",
        "",
        *table,
        "",
        "The evaluation stage's report compares this model with the untrained student and the teacher.",
    ]
    return "\n".join(front + [""] + body) + "\n"


def _number(value: Any) -> str | None:
    return None if value is None else f"{value:.4g}"


def _merge_check(facts: dict[str, Any]) -> str | None:
    if facts.get("max_logit_diff") is None:
        return "not applicable (full fine-tuning, nothing merged)"
    return f"{facts['max_logit_diff']:.3g} (tolerance {facts['tolerance']:.3g})"
