"""On-policy KD: the student's own samples, scored by the teacher; determinism, resume, loss vs reference."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.common.config import from_dict
from components.common.errors import ConfigError
from components.common.records import read_records
from components.train import Config
from components.train.batching import collate
from components.train.data import IGNORE, Encoder
from components.train.losses import Divergence
from components.train.objective import DistillObjective, teacher_outputs
from components.train.on_policy import ce_targets, draw, with_samples
from components.train.stage import run
from tests.train.conftest import assert_resume_reaches_the_same_weights

REPO = Path(__file__).resolve().parents[2]


def sampled_batch(student, tokenizer, examples, seed=0, step=0, fraction=0.5):
    return with_samples(
        student,
        examples,
        fraction=fraction,
        rng=draw(seed, step, 0, 0),
        pad_id=tokenizer.pad_token_id,
        eos_id=tokenizer.eos_token_id,
        temperature=1.0,
        max_new_tokens=6,
    )


@pytest.fixture(scope="module")
def models(tiny_model_dir, tiny_teacher_dir, reversal_data):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    student = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir, attn_implementation="sdpa")
    examples = [Encoder(tokenizer, 128).encode(r) for r in read_records(reversal_data / "train.jsonl")[:6]]
    return tokenizer, student, teacher, examples


def test_samples_are_a_function_of_seed_and_step_and_replace_only_the_answer(models):
    tokenizer, student, _, examples = models
    first = sampled_batch(student, tokenizer, examples)
    again = sampled_batch(student, tokenizer, examples)
    later = sampled_batch(student, tokenizer, examples, step=1)
    assert [e.input_ids for e in first] == [e.input_ids for e in again]
    assert [e.input_ids for e in first] != [e.input_ids for e in later]
    sampled = [(old, new) for old, new in zip(examples, first, strict=True) if new.sampled]
    assert 0 < len(sampled) < len(examples), "lambda 0.5 picks some prompts, not all"
    for old, new in sampled:
        prompt = next(t for t, label in enumerate(old.labels) if label != IGNORE)
        assert new.input_ids[:prompt] == old.input_ids[:prompt]
        assert new.labels[:prompt] == [IGNORE] * prompt and new.labels[prompt:] == new.input_ids[prompt:]
        tail = new.input_ids[prompt:]
        assert len(tail) <= 6 and (tokenizer.eos_token_id not in tail[:-1])


def reference_loss(student, teacher, examples, spec, ce_weight, kd_weight):
    """Example by example on full logits: CE on teacher-written answers, the divergence on every scored
    token, written out for reverse KL."""
    total = 0.0
    for example in examples:
        ids = torch.tensor([example.input_ids])
        positions = [t for t, label in enumerate(example.labels[1:]) if label != IGNORE]
        targets = torch.tensor([example.labels[t + 1] for t in positions])
        logits = student(ids).logits[0, positions].float()
        with torch.no_grad():
            teacher_logits = teacher(ids).logits[0, positions].float()
        log_q = F.log_softmax(logits / spec.temperature, -1)
        log_p = F.log_softmax(teacher_logits / spec.temperature, -1)
        reverse_kl = (log_q.exp() * (log_q - log_p)).sum() * spec.temperature**2
        ce = 0.0 if example.sampled else F.cross_entropy(logits, targets, reduction="sum")
        total = total + ce_weight * ce + kd_weight * reverse_kl
    return total


@pytest.mark.parametrize("chunk_size", [0, 3])
def test_on_policy_loss_matches_the_reference_in_value_and_gradient(models, chunk_size):
    tokenizer, student, teacher, examples = models
    batch_examples = sampled_batch(student, tokenizer, examples, seed=5)
    assert any(e.sampled for e in batch_examples)
    spec = Divergence("reverse_kl", temperature=2.0)
    batch = collate(batch_examples, tokenizer.pad_token_id, "padded", 128)
    model_inputs, loss_inputs = (
        batch.model_inputs(torch.device("cpu")),
        batch.loss_inputs(torch.device("cpu")),
    )
    loss_inputs["targets"] = ce_targets(loss_inputs["targets"], batch.examples)
    objective = DistillObjective(student, spec, chunk_size, logit_kd=True)
    scores = teacher_outputs(teacher, model_inputs, loss_inputs["scored_index"])
    terms = objective(**model_inputs, **loss_inputs, teacher=scores, ce_weight=0.3, kd_weight=0.7)
    params = [p for p in student.parameters() if p.requires_grad]
    grads = torch.autograd.grad(terms["loss"], params)
    want = reference_loss(student, teacher, batch.examples, spec, 0.3, 0.7)
    want_grads = torch.autograd.grad(want, params)
    assert terms["loss"].item() == pytest.approx(want.item(), rel=1e-4)
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-5)


def test_on_policy_without_a_scoring_teacher_is_refused_at_load(tiny_model_dir, reversal_data, tmp_path):
    base = {
        "student_dir": str(tiny_model_dir),
        "data_dir": str(reversal_data),
        "output_dir": str(tmp_path / "out"),
        "tensorboard_dir": str(tmp_path / "tb"),
    }
    with pytest.raises(ConfigError, match=r"^kd.teacher_dir: kind 'on_policy' needs a teacher that scores"):
        from_dict(Config, {**base, "kd": {"kind": "on_policy"}})
    with pytest.raises(ConfigError, match=r"^kd.teacher_url: only kinds 'logits' and 'on_policy'"):
        from_dict(Config, {**base, "kd": {"kind": "topk", "teacher_url": "http://127.0.0.1:1"}})
    with pytest.raises(ConfigError, match=r"^kd.on_policy.fraction: must be in \[0, 1\]"):
        from_dict(
            Config, {**base, "kd": {"kind": "on_policy", "teacher_dir": "t", "on_policy": {"fraction": 2}}}
        )
    with pytest.raises(ConfigError, match=r"^kd.kind: on_policy samples with the student's generate\(\)"):
        from_dict(
            Config,
            {**base, "deepspeed": "zero3", "kd": {"kind": "on_policy", "teacher_dir": "t"}},
        )


@pytest.mark.parametrize("teacher", ["same", "other"])
def test_on_policy_kd_trains_with_a_teacher_of_either_tokenizer(
    make_config, tiny_teacher_dir, tmp_path_factory, teacher
):
    if teacher == "same":
        teacher_dir = tiny_teacher_dir
    else:
        from components.common.tiny_model import make_tiny_model

        teacher_dir = tmp_path_factory.mktemp("merged-teacher")
        make_tiny_model("tiny://qwen2?warmup_steps=0&merges=776&seed=2", teacher_dir)
    config = make_config(
        max_steps=2,
        kd={
            "kind": "on_policy",
            "teacher_dir": str(teacher_dir),
            "divergence": "jsd",
            "beta": 0.5,
            "on_policy": {"fraction": 0.5, "max_new_tokens": 8},
        },
    )
    result = run(config)
    assert result.loss_parts["kd"] > 0 and math.isfinite(result.final_loss)
    weights = load_file(f"{config.output_dir}/adapter_model.safetensors")
    assert any(w.abs().sum() > 0 for name, w in weights.items() if "lora_B" in name)
    if teacher == "other":
        assert result.kd_alignment["matched_positions"] > 0 and result.kd_alignment["sorted_positions"] > 0


def test_kill_9_then_resume_draws_the_same_samples_and_reaches_the_same_weights(
    make_config, tiny_teacher_dir, tmp_path
):
    kd = {"kind": "on_policy", "teacher_dir": str(tiny_teacher_dir), "on_policy": {"max_new_tokens": 6}}
    assert_resume_reaches_the_same_weights(make_config, tmp_path, kd=kd)


def test_each_curriculum_phase_can_set_its_own_on_policy_fraction(tiny_model_dir, reversal_data, tmp_path):
    from components.train.curriculum import plan_phases
    from components.train.settings import phase_defaults

    fields = {
        "student_dir": str(tiny_model_dir),
        "data_dir": str(reversal_data),
        "output_dir": str(tmp_path / "out"),
        "tensorboard_dir": str(tmp_path / "tb"),
        "kd": {"kind": "on_policy", "teacher_dir": "t", "on_policy": {"fraction": 0.5}},
    }
    phases = [
        {"name": "teacher-text", "max_steps": 1, "on_policy_fraction": 0.0},
        {"name": "own", "max_steps": 1},
    ]
    config = from_dict(Config, {**fields, "curriculum": phases})
    plans = plan_phases(
        phase_defaults(config),
        config.curriculum,
        config.start_phase,
        config.end_phase,
        {"main": []},
        Divergence(),
    )
    assert [plan.on_policy_fraction for plan in plans] == [0.0, 0.5]
    with pytest.raises(ConfigError, match=r"curriculum phase 'x': on_policy_fraction must be in \[0, 1\]"):
        from_dict(
            Config, {**fields, "curriculum": [{"name": "x", "max_steps": 1, "on_policy_fraction": 1.5}]}
        )
