"""The model card (README.md) written next to the merged weights: where the model came from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.common.errors import InputError


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


def dataset_facts(data_dir: str) -> dict[str, str]:
    """teacher and dataset names from the teacher stage's summary.json in `data_dir` ({} without one)."""
    if not data_dir:
        return {}
    if not Path(data_dir).is_dir():
        raise InputError(
            f"data_dir: {data_dir} is not a folder; give the teacher dataset folder or leave it empty"
        )
    path = Path(data_dir) / "summary.json"
    if not path.is_file():
        return {}
    summary = json.loads(path.read_text())
    teacher, config, counts = (
        summary.get("teacher", {}),
        summary.get("config", {}),
        summary.get("metrics", {}),
    )
    facts = {}
    if teacher.get("model"):
        facts["teacher"] = f"{teacher.get('provider', '?')}/{teacher['model']}"
    if config.get("dataset"):
        records = f" ({counts['train']} training records)" if "train" in counts else ""
        facts["dataset"] = f"{config['dataset']}{records}"
    return facts
