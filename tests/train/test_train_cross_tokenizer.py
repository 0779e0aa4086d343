"""Cross-tokenizer KD: teacher top-k over its own tokens, aligned to the student's by byte spans."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.common.errors import InputError
from components.common.logprobs import read_positions
from components.common.records import read_records, write_records
from components.common.tiny_model import make_tiny_model
from components.train.cross_tokenizer import align, token_bytes
from components.train.data import Encoder
from components.train.losses import token_losses
from components.train.sparse_kd import answer_text, scored_targets, scored_tokens
from components.train.stage import run
from components.train.teacher_scoring import LocalScorer
from tests.train.conftest import assert_resume_reaches_the_same_weights


@pytest.fixture(scope="session")
def merged_teacher_dir(tmp_path_factory):
    """A tiny teacher whose tokenizer merges digit and letter pairs: other ids, other token spans."""
    path = tmp_path_factory.mktemp("tiny-merged-teacher")
    make_tiny_model("tiny://qwen2?warmup_steps=0&merges=776&hidden=192&layers=3&heads=6&seed=2", path)
    return path


def entry(text: str, logprob: float, top: list[tuple[str, float]] | None = None) -> dict:
    out = {"token": text, "logprob": logprob, "bytes": list(text.encode())}
    if top is not None:
        out["top_logprobs"] = [entry(t, v) for t, v in top]
    return out


def test_equal_spans_take_mapped_top_k_other_spans_sorted_probabilities(tiny_model_dir):
    student = token_bytes(AutoTokenizer.from_pretrained(tiny_model_dir))
    ids = [student.id_of[b] for b in (b"a", b"b", b"1")]
    entries = [
        entry("ab", -0.1, [("ab", -0.1), ("a", -2.5)]),
        # "12" is no student token: its mass goes to "1", the student token its text starts with.
        entry("1", -0.2, [("1", -0.2), ("12", -1.9)]),
    ]
    table, counts = align(ids, read_positions(entries), student)
    assert table[0].sorted_only and table[0].logprobs == [-0.1, -2.5]
    assert table[1] is None
    assert not table[2].sorted_only and table[2].ids == [ids[2]]
    assert table[2].logprobs == pytest.approx([math.log(math.exp(-0.2) + math.exp(-1.9))])
    assert (counts.matched_positions, counts.sorted_positions, counts.uncovered_positions) == (1, 1, 1)
    table, counts = align(ids, read_positions([entry("ax", -0.1, [])]), student)
    assert table is None and counts.unaligned_records == 1


def reference_kd(
    student_logits,
    student_ids,
    teacher_logprobs,
    teacher_ids,
    student_bytes,
    teacher_bytes,
    student_tokenizer,
):
    """Position by position over the full distributions: KL over mapped tokens + rest where the spans are
    equal, sorted-probability L1 where only the starts are, nothing elsewhere."""

    def pieces_spans(pieces):
        out, start = [], 0
        for piece in pieces:
            out.append((start, start + len(piece)))
            start += len(piece)
        return out

    s_spans = pieces_spans([student_bytes.of_id[i] for i in student_ids])
    t_spans = pieces_spans([teacher_bytes.of_id[i] for i in teacher_ids])
    total = student_logits.new_zeros(())
    for row, (start, end) in enumerate(s_spans):
        j = next((j for j, (a, _) in enumerate(t_spans) if a == start), None)
        if j is None:
            continue
        p = teacher_logprobs[j].exp()
        q = F.softmax(student_logits[row], -1)
        if t_spans[j][1] == end:
            # Each teacher token's mass goes to the first student token of its text.
            mapped: dict[int, torch.Tensor] = {}
            for t in range(p.shape[0]):
                text = teacher_bytes.of_id[t]
                s = student_bytes.id_of.get(text)
                if s is None:
                    s = student_tokenizer(text.decode(), add_special_tokens=False)["input_ids"][0]
                mapped[s] = mapped[s] + p[t] if s in mapped else p[t]
            p_top = torch.stack(list(mapped.values()))
            q_top = q[list(mapped)]
            total = total + (torch.xlogy(p_top, p_top) - p_top * q_top.log()).sum()
            rest_p, rest_q = 1 - p_top.sum(), 1 - q_top.sum()
            if rest_p > 1e-6:
                total = total + rest_p * (rest_p.log() - rest_q.log())
        else:
            k = min(p.shape[0], q.shape[0])
            ps, qs = p.sort(descending=True).values[:k], q.sort(descending=True).values[:k]
            total = total + (ps - qs).abs().sum() + ((1 - ps.sum()) - (1 - qs.sum())).abs()
    return total


@pytest.mark.parametrize("fused", [True, False])
def test_local_teacher_with_another_tokenizer_matches_the_reference(
    tiny_model_dir, merged_teacher_dir, reversal_data, fused
):
    torch.manual_seed(0)
    s_tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    t_tok = AutoTokenizer.from_pretrained(merged_teacher_dir)
    student = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    teacher = AutoModelForCausalLM.from_pretrained(merged_teacher_dir)
    records = read_records(reversal_data / "train.jsonl")[:2]
    examples = [Encoder(s_tok, 128).encode(r) for r in records]
    answers = [answer_text(e, s_tok) for e in examples]
    assert answers == [r.answer for r in records]
    scorer = LocalScorer(teacher, t_tok, top_k=len(t_tok))
    entries = scorer.entries([r.prompt_messages for r in records], answers)
    targets, counts = scored_targets(examples, entries, s_tok, torch.device("cpu"))
    assert counts.matched_positions and counts.sorted_positions and not counts.unaligned_records

    head = student.get_output_embeddings()
    rows, reference_rows = [], []
    for record, example in zip(records, examples, strict=True):
        ids = torch.tensor([example.input_ids])
        hidden = student.model(ids).last_hidden_state[0]
        positions = [t for t, label in enumerate(example.labels[1:]) if label != -100]
        rows.append(hidden[positions])
        prompt = t_tok.apply_chat_template(record.prompt_messages, add_generation_prompt=True, tokenize=True)
        prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
        answer_ids = t_tok(record.answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = teacher(torch.tensor([prompt + answer_ids])).logits[0]
        reference_rows.append(
            (scored_tokens(example), torch.log_softmax(logits[len(prompt) - 1 : -1], -1), answer_ids)
        )
    hidden = torch.cat(rows).detach().requires_grad_(True)
    sums = token_losses(
        hidden,
        torch.tensor([t for e in examples for t in scored_tokens(e)]),
        head,
        chunk_size=5,
        ce_weight=0.0,
        kd_weight=1.0,
        topk_ids=targets.ids,
        topk_logprobs=targets.logprobs,
        topk_mask=targets.mask,
        topk_sorted=targets.sorted_only,
        fused=fused,
    )
    (grad,) = torch.autograd.grad(sums.loss, hidden)

    reference_hidden = hidden.detach().clone().requires_grad_(True)
    logits = head(reference_hidden)
    total, start = logits.new_zeros(()), 0
    s_bytes, t_bytes = token_bytes(s_tok), token_bytes(t_tok)
    for student_ids, teacher_logprobs, teacher_ids in reference_rows:
        part = logits[start : start + len(student_ids)]
        total = total + reference_kd(
            part, student_ids, teacher_logprobs, teacher_ids, s_bytes, t_bytes, s_tok
        )
        start += len(student_ids)
    (reference_grad,) = torch.autograd.grad(total, reference_hidden)
    assert sums.loss.item() == pytest.approx(total.item(), rel=1e-4)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-3, atol=1e-6)


def api_logprobs(records, teacher_dir, k=5):
    """What an OpenAI-compatible API serving the merged teacher stores: token text, bytes, top_logprobs."""
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    for record in records:
        prompt = tokenizer.apply_chat_template(
            record.prompt_messages, add_generation_prompt=True, tokenize=True
        )
        prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
        answer = tokenizer(record.answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(teacher(torch.tensor([prompt + answer])).logits[0], -1)
        record.extra["logprobs"] = [
            entry(
                tokenizer.decode([token]),
                float(logprobs[len(prompt) - 1 + t, token]),
                [
                    (tokenizer.decode([int(i)]), float(v))
                    for v, i in zip(*logprobs[len(prompt) - 1 + t].topk(k), strict=True)
                ],
            )
            for t, token in enumerate(answer)
        ]
    return records


def test_stored_api_logprobs_of_another_tokenizer_train_the_student_and_count_unaligned_records(
    make_config, reversal_data, merged_teacher_dir, tmp_path
):
    records = api_logprobs(read_records(reversal_data / "train.jsonl")[:16], merged_teacher_dir)
    # A template that changed the text: the teacher's tokens spell something else.
    records[0].extra["logprobs"][0] = entry("#", -0.5, [("#", -0.5)])
    write_records(tmp_path / "data" / "train.jsonl", records)
    config = make_config(data_dir=str(tmp_path / "data"), max_steps=2, kd={"kind": "topk", "alpha": 0.5})
    result = run(config)
    assert result.loss_parts["kd"] > 0 and math.isfinite(result.loss_parts["kd"])
    alignment = result.kd_alignment
    assert alignment["records"] == 16 and alignment["unaligned_records"] == 1
    assert alignment["matched_positions"] > 0 and alignment["sorted_positions"] > 0


def test_local_teacher_with_another_tokenizer_distills_instead_of_being_refused(
    make_config, merged_teacher_dir
):
    config = make_config(
        max_steps=2, kd={"kind": "logits", "teacher_dir": str(merged_teacher_dir), "top_k": 8}
    )
    result = run(config)
    assert result.loss_parts["kd"] > 0 and math.isfinite(result.loss_parts["kd"])
    assert result.kd_alignment["sorted_positions"] > 0 and result.kd_alignment["unaligned_records"] == 0


def test_kill_9_then_resume_with_another_tokenizers_teacher_reaches_the_same_weights(
    make_config, merged_teacher_dir, tmp_path
):
    kd = {"kind": "logits", "teacher_dir": str(merged_teacher_dir), "top_k": 8}
    assert_resume_reaches_the_same_weights(make_config, tmp_path, kd=kd)


def test_intermediate_terms_with_another_tokenizer_are_refused_before_training(
    make_config, merged_teacher_dir, tmp_path
):
    config = make_config(
        kd={"kind": "logits", "teacher_dir": str(merged_teacher_dir)}, intermediate={"hidden_weight": 1.0}
    )
    with pytest.raises(InputError, match=r"kd.teacher_dir: the teacher's tokenizer differs .* intermediate"):
        run(config)
    assert not (tmp_path / "out").exists()
