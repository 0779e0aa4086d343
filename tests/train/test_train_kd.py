"""Logit-level, sparse top-k and intermediate-layer distillation against a tiny local teacher."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.common import logprobs_file
from components.common.errors import InputError
from components.common.logprobs import read_position
from components.common.records import read_records, write_records
from components.train.data import Encoder
from components.train.sparse_kd import attach_topk, scored_tokens
from components.train.stage import run
from tests.train.conftest import logprobs_from_teacher


@pytest.mark.parametrize(
    "kd",
    [
        {"divergence": "forward_kl", "temperature": 2.0},
        {"divergence": "reverse_kl"},
        {"divergence": "jsd", "beta": 0.3},
    ],
    ids=lambda kd: kd["divergence"],
)
def test_logit_kd_with_each_divergence_trains_the_adapter(make_config, tiny_teacher_dir, kd):
    config = make_config(
        max_steps=2,
        kd={"kind": "logits", "teacher_dir": str(tiny_teacher_dir), "alpha": 0.7, "chunk_size": 32, **kd},
    )
    result = run(config)
    assert result.loss_parts["kd"] > 0 and math.isfinite(result.loss_parts["kd"])
    # The mixed loss of the last window is (1 - alpha) * CE + alpha * KD.
    expected = 0.3 * result.loss_parts["ce"] + 0.7 * result.loss_parts["kd"]
    assert result.final_loss == pytest.approx(expected, rel=1e-4)
    weights = load_file(f"{config.output_dir}/adapter_model.safetensors")
    assert any(w.abs().sum() > 0 for name, w in weights.items() if "lora_B" in name)


def test_heads_padded_to_different_sizes_for_one_tokenizer_are_compared_on_the_shared_ids(
    make_config, tiny_teacher_dir, tmp_path
):
    # Qwen2.5 0.5B-3B have 151936 head rows and 7B+ 152064 for the same tokenizer.
    padded = tmp_path / "padded-teacher"
    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir)
    teacher.resize_token_embeddings(teacher.config.vocab_size + 64)
    teacher.save_pretrained(padded)
    AutoTokenizer.from_pretrained(tiny_teacher_dir).save_pretrained(padded)
    result = run(make_config(max_steps=1, kd={"kind": "logits", "teacher_dir": str(padded)}))
    assert math.isfinite(result.loss_parts["kd"])


def test_sparse_topk_kd_from_stored_logprobs(
    make_config, reversal_data, tiny_teacher_dir, tiny_model_dir, tmp_path
):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir)
    records = logprobs_from_teacher(read_records(reversal_data / "train.jsonl")[:24], tokenizer, teacher)
    data = tmp_path / "with-logprobs"
    write_records(data / "train.jsonl", records)
    result = run(make_config(data_dir=str(data), max_steps=2, kd={"kind": "topk", "alpha": 0.5}))
    assert result.loss_parts["kd"] > 0 and math.isfinite(result.loss_parts["kd"])


def test_records_whose_text_differs_from_the_students_fall_back_to_cross_entropy(
    reversal_data, tiny_model_dir
):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    records = read_records(reversal_data / "train.jsonl")[:2]
    examples = [Encoder(tokenizer, 128).encode(r) for r in records]
    good = {"token": f"token_id:{scored_tokens(examples[0])[0]}", "logprob": -0.1}
    records[0].extra["logprobs"] = [{**good, "top_logprobs": [good]}]
    records[1].extra["logprobs"] = [{"token": "zzz", "logprob": -0.1, "top_logprobs": []}]
    counts = attach_topk(examples, records, tokenizer)
    first = examples[0].teacher_topk[0]
    assert first.ids == [scored_tokens(examples[0])[0]] and first.logprobs == pytest.approx([-0.1])
    assert examples[1].teacher_topk is None
    assert (counts.records, counts.unaligned_records) == (2, 1)


@pytest.mark.parametrize(("kind", "batching"), [("logits", "padding_free"), ("none", "packed")])
def test_intermediate_terms_train_a_projection_and_report_each_part(
    make_config, tiny_teacher_dir, kind, batching
):
    config = make_config(
        max_steps=2,
        batching=batching,
        kd={"kind": kind, "teacher_dir": str(tiny_teacher_dir)},
        intermediate={
            "hidden_weight": 1.0,
            "attention_weight": 1.0,
            "contrastive_weight": 0.5,
            "layer_map": [[1, 2], [2, 3]],
            "balance": True,
        },
    )
    result = run(config)
    # The teacher may serve the intermediate terms alone, without KD over its logits.
    assert ("kd" in result.loss_parts) == (kind == "logits")
    for part in ("hidden_loss", "attention_loss", "contrastive_loss"):
        assert part in result.loss_parts and math.isfinite(result.loss_parts[part])
    # Balanced terms are divided by their own running magnitude: each lands near its weight.
    assert result.loss_parts["hidden_loss"] == pytest.approx(1.0, rel=0.5)


BAD_VALUES = [
    {"logprob": 50.0},
    {"logprob": float("inf")},
    {"logprob": float("nan")},
    {"bytes": [4_000_000_000]},
    {"top_logprobs": "many"},
]


def test_stored_logprobs_that_are_not_probabilities_are_counted_and_skipped(
    make_config, reversal_data, tiny_teacher_dir, tiny_model_dir, tmp_path
):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir)
    clean = logprobs_from_teacher(read_records(reversal_data / "train.jsonl")[:24], tokenizer, teacher)
    spoilt = logprobs_from_teacher(read_records(reversal_data / "train.jsonl")[:24], tokenizer, teacher)
    for record, bad in zip(spoilt, BAD_VALUES, strict=False):
        record.extra["logprobs"][0].update(bad)  # the first token of five records
    spoilt[5].extra["logprobs"][1]["top_logprobs"] *= 6  # 24 alternatives, more than any teacher gives
    summaries = {}
    for name, records in (("clean", clean), ("spoilt", spoilt)):
        data = tmp_path / name
        # As the teacher stage stores them: logprobs.jsonl beside train.jsonl (non-finite as JSON allows).
        write_records(data / "train.jsonl", [replace(r, extra={}) for r in records])
        lines = [json.dumps({"schema": 1, "id": r.id, "logprobs": r.extra["logprobs"]}) for r in records]
        (data / "logprobs.jsonl").write_text("\n".join(lines) + "\n")
        config = make_config(
            data_dir=str(data), output_dir=str(tmp_path / f"out-{name}"), max_steps=2, kd={"kind": "topk"}
        )
        result = run(config)
        assert math.isfinite(result.final_loss) and math.isfinite(result.loss_parts["kd"])
        summaries[name] = json.loads((tmp_path / f"out-{name}" / "train_summary.json").read_text())
    alignment = {name: summary["kd_alignment"] for name, summary in summaries.items()}
    # The bytes of record 3's first token are unreadable, so are its place in the text and all after it:
    # its positions are dropped; each other bad position is skipped alone.
    dropped = len(spoilt[3].extra["logprobs"])
    assert alignment["clean"]["bad_positions"] == 0 and alignment["spoilt"]["bad_positions"] == 5 + dropped
    assert alignment["spoilt"]["missing_records"] == 1
    assert alignment["spoilt"]["matched_positions"] == alignment["clean"]["matched_positions"] - 5 - dropped
    assert summaries["spoilt"]["final_loss"] == pytest.approx(summaries["clean"]["final_loss"], rel=0.2)


def test_a_parquet_file_holding_values_that_are_not_probabilities_is_counted_and_skipped(
    make_config, reversal_data, tiny_teacher_dir, tiny_model_dir, tmp_path
):
    """logprobs.parquet comes from a bucket: a file written past the teacher stage's checks (+50, inf,
    NaN, 24 alternatives) trains on the rest, its bad positions counted."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir)
    records = logprobs_from_teacher(read_records(reversal_data / "train.jsonl")[:24], tokenizer, teacher)
    data = tmp_path / "spoilt"
    write_records(data / "train.jsonl", [replace(r, extra={}) for r in records])
    with logprobs_file.LogprobsWriter(data / "logprobs.parquet") as writer:
        for number, record in enumerate(records):
            positions = [read_position(raw, 20) for raw in record.extra["logprobs"]]
            first = positions[0]
            spoilt = {
                0: replace(first, logprob=50.0),
                1: replace(first, logprob=float("inf")),
                2: replace(first, logprob=float("nan")),
                3: replace(first, top_logprobs=first.top_logprobs * 6),
            }
            writer.rows.append((record.id, [spoilt.get(number, first), *positions[1:]]))
    result = run(
        make_config(data_dir=str(data), output_dir=str(tmp_path / "out"), max_steps=2, kd={"kind": "topk"})
    )
    assert math.isfinite(result.final_loss) and math.isfinite(result.loss_parts["kd"])
    alignment = json.loads((tmp_path / "out" / "train_summary.json").read_text())["kd_alignment"]
    assert alignment["bad_positions"] == 4 and alignment["missing_records"] == 0
    with (data / "logprobs.parquet").open("r+b") as cut:
        cut.truncate(1000)
    with pytest.raises(InputError, match=r"logprobs.parquet: not a readable logprobs parquet file"):
        run(make_config(data_dir=str(data), max_steps=1, kd={"kind": "topk"}))


def test_records_and_logprobs_of_a_newer_layout_are_refused_in_one_line(
    make_config, reversal_data, tmp_path, monkeypatch
):
    records = read_records(reversal_data / "train.jsonl")[:4]
    newer = tmp_path / "newer-records"
    write_records(newer / "train.jsonl", [replace(records[0], schema=2), *records[1:]])
    with pytest.raises(
        InputError, match=r"train.jsonl:1: field 'schema' is 2, this stage reads record schema 1"
    ):
        run(make_config(data_dir=str(newer)))
    newer_logprobs = tmp_path / "newer-logprobs"
    write_records(newer_logprobs / "train.jsonl", records)
    line = {"schema": 2, "id": records[0].id, "logprobs": []}
    (newer_logprobs / "logprobs.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(InputError, match=r"logprobs.jsonl:1: logprobs schema 2, this stage reads schema 1"):
        run(make_config(data_dir=str(newer_logprobs), kd={"kind": "topk"}))
    monkeypatch.setattr(logprobs_file, "LOGPROBS_SCHEMA", 2)
    with logprobs_file.LogprobsWriter(newer_logprobs / "logprobs.parquet") as writer:
        writer.add(records[0].id, [{"token": "a", "logprob": -0.1, "bytes": [97]}])
    monkeypatch.undo()
    with pytest.raises(InputError, match=r"logprobs.parquet: logprobs schema 2, this stage reads schema 1"):
        run(make_config(data_dir=str(newer_logprobs), kd={"kind": "topk"}))
