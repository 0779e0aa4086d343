"""Batches: every layout gives every record exactly the logits it gets alone; the order is reproducible."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.train import varlen
from components.train.batching import (
    BatchStream,
    collate,
    collate_packed,
    collate_padded,
    collate_padding_free,
    epoch_batches,
    pack_rows,
)
from components.train.data import IGNORE, Encoder, encode_records
from components.train.losses import Divergence
from components.train.objective import DistillObjective
from tests.train.conftest import reversal_records

CPU = torch.device("cpu")
reference_path = varlen.varlen_padded_sdpa
LAYOUTS = ("padding_free", "padded", "grouped", "packed")


def examples(tiny_model_dir, count=6):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return tokenizer, encode_records(Encoder(tokenizer, 128), reversal_records(count, seed=3))


def per_record_logits(model, batch):
    """Each record's logits, cut out of the batch's rows by its segment id."""
    with torch.no_grad():
        logits = model(**batch.model_inputs(CPU), use_cache=False).logits
    return [logits[batch.segment_ids == i] for i in range(len(batch.examples))]


def model_for(tiny_model_dir, layout: str):
    """The student as the trainer loads it for `layout` (attention: auto)."""
    attention = varlen.register() if layout == "padding_free" else "sdpa"
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attention)


@pytest.mark.parametrize("layout", ["padding_free", "packed"])
def test_shared_rows_never_attend_across_records(tiny_model_dir, layout, monkeypatch):
    tokenizer, items = examples(tiny_model_dir)
    model = model_for(tiny_model_dir, layout).eval()
    batch = collate(items, tokenizer.pad_token_id, layout, max_length=128)
    assert batch.input_ids.shape[0] < len(items), "several records share a row"
    calls = []
    monkeypatch.setattr(varlen, "varlen_padded_sdpa", lambda *a: calls.append(1) or reference_path(*a))
    logits_per_record = per_record_logits(model, batch)
    # Padding-free rows reach the variable-length path in every block; packed rows go to SDPA's mask.
    assert len(calls) == (model.config.num_hidden_layers if layout == "padding_free" else 0)
    for example, logits in zip(batch.examples, logits_per_record, strict=True):
        with torch.no_grad():
            alone = model(**collate_padding_free([example]).model_inputs(CPU)).logits[0]
        torch.testing.assert_close(logits, alone, atol=1e-5, rtol=1e-5)


def test_the_objective_gives_the_same_loss_and_gradients_in_every_layout(tiny_model_dir):
    tokenizer, items = examples(tiny_model_dir)
    losses, grads = [], []
    for layout in LAYOUTS:
        model = model_for(tiny_model_dir, layout)
        objective = DistillObjective(model, Divergence(), chunk_size=16)
        batch = collate(items, tokenizer.pad_token_id, layout, max_length=128)
        loss = objective(**batch.model_inputs(CPU), **batch.loss_inputs(CPU))["loss"]
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    for loss, grad in zip(losses[1:], grads[1:], strict=True):
        torch.testing.assert_close(loss, losses[0], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(grad, grads[0], atol=1e-5, rtol=1e-4)


def test_the_padding_free_kernel_refuses_a_call_without_offsets(tiny_model_dir):
    model = model_for(tiny_model_dir, "padding_free")
    with pytest.raises(ValueError, match="cu_seq_lens_q"):
        model(input_ids=torch.tensor([[5, 6, 7]]))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_keeps_every_scored_token_and_scores_nothing_across_a_boundary(tiny_model_dir, layout):
    tokenizer, items = examples(tiny_model_dir)
    batch = collate(items, tokenizer.pad_token_id, layout, max_length=128)
    assert batch.num_scored == sum(e.num_scored for e in items)
    assert batch.num_tokens == sum(len(e.input_ids) for e in items)
    assert int((batch.segment_ids >= 0).sum()) == batch.num_tokens
    # The targets are each record's own scored labels, in the order of batch.examples.
    expected = [label for e in batch.examples for label in e.labels[1:] if label != IGNORE]
    assert batch.targets.tolist() == expected
    # scored_index points at the position just before each target, inside the same record.
    flat_segments = batch.segment_ids.flatten()
    assert (flat_segments[batch.scored_index] == flat_segments[batch.scored_index + 1]).all()
    assert (batch.input_ids.flatten()[batch.scored_index + 1] == batch.targets).all()
    if batch.position_ids is not None:
        assert (batch.labels[batch.position_ids == 0] == IGNORE).all()


def test_a_padding_free_batch_is_one_row_with_offsets_and_no_padding(tiny_model_dir):
    tokenizer, items = examples(tiny_model_dir)
    batch = collate_padding_free(items)
    lengths = [len(e.input_ids) for e in items]
    assert batch.input_ids.shape == (1, sum(lengths))
    assert batch.cu_seqlens.tolist() == [sum(lengths[:i]) for i in range(len(items) + 1)]
    assert batch.cu_seqlens.dtype == torch.int32 and batch.max_seqlen == max(lengths)
    assert batch.position_ids[0, batch.cu_seqlens[:-1].long()].eq(0).all()
    assert batch.attention_mask is None and (batch.segment_ids >= 0).all()
    inputs = batch.model_inputs(CPU)
    assert inputs["cu_seq_lens_q"] is inputs["cu_seq_lens_k"] and inputs["max_length_q"] == max(lengths)
    padded, packed = collate_padded(items, tokenizer.pad_token_id), collate_packed(items, 0, 128)
    assert "cu_seq_lens_q" not in padded.model_inputs(CPU) | packed.model_inputs(CPU)


def reference_attention(q, k, v, lengths):
    """Each record alone through causal SDPA, key/value heads repeated for grouped queries."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    out, start = [], 0
    for n in lengths:
        part = [x[start : start + n].transpose(0, 1)[None] for x in (q, k, v)]
        out.append(torch.nn.functional.scaled_dot_product_attention(*part, is_causal=True)[0].transpose(0, 1))
        start += n
    return torch.cat(out)


def varlen_inputs(lengths, heads=4, kv_heads=2, dim=16, device="cpu", dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    total = sum(lengths)
    q, k, v = (
        torch.randn(total, h, dim, generator=generator).to(device, dtype).requires_grad_()
        for h in (heads, kv_heads, kv_heads)
    )
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    return q, k, v, cu


def call_registered(q, k, v, cu, lengths):
    """Through transformers' contract: (1, heads, tokens, dim) in, (1, tokens, heads, dim) out."""
    out, weights = varlen.varlen_attention_forward(
        None,
        *(x.transpose(0, 1)[None] for x in (q, k, v)),
        None,
        cu_seq_lens_q=cu,
        max_length_q=max(lengths),
    )
    assert weights is None
    return out[0]


def test_padding_free_attention_equals_each_record_alone_with_grouped_queries():
    lengths = [5, 1, 9, 3]
    q, k, v, cu = varlen_inputs(lengths)
    out = call_registered(q, k, v, cu, lengths)
    expected = reference_attention(q, k, v, lengths)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    reference_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    for grad, reference in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(grad, reference, atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_flash_kernel_path_matches_the_reference_on_a_gpu():
    lengths = [300, 17, 512, 80]
    q, k, v, cu = varlen_inputs(lengths, heads=14, kv_heads=2, dim=64, device="cuda", dtype=torch.bfloat16)
    assert varlen.flash_usable(q), "torch.nn.attention.varlen should serve bf16 on CUDA"
    out = call_registered(q, k, v, cu, lengths)
    expected = reference_attention(q.float(), k.float(), v.float(), lengths)
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)
    grad = torch.autograd.grad(out.float().square().sum(), q)[0]
    reference = torch.autograd.grad(expected.square().sum(), q)[0]
    torch.testing.assert_close(grad.float(), reference, atol=5e-2, rtol=5e-2)


def test_a_model_trained_padding_free_saves_a_config_without_the_kernel_name(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=varlen.register())
    model.save_pretrained(tmp_path)
    assert varlen.NAME not in (tmp_path / "config.json").read_text()


def test_first_fit_packing_respects_the_row_budget():
    rows = pack_rows([7, 3, 5, 5, 2, 8], max_length=10)
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert all(sum([7, 3, 5, 5, 2, 8][i] for i in row) <= 10 for row in rows)
    assert len(rows) == 3


def test_data_order_is_a_function_of_seed_and_epoch():
    lengths = list(range(20))
    assert epoch_batches(lengths, 4, seed=1, epoch=0) == epoch_batches(lengths, 4, seed=1, epoch=0)
    assert epoch_batches(lengths, 4, seed=1, epoch=0) != epoch_batches(lengths, 4, seed=1, epoch=1)
    grouped = epoch_batches(lengths, 4, seed=1, epoch=0, group_by_length=True)
    assert sorted(i for batch in grouped for i in batch) == lengths
    # Grouped batches hold neighbours in length: the spread inside a batch is small.
    assert max(max(b) - min(b) for b in grouped) == 3


def test_the_stream_continues_across_epochs_and_restarts_identically(tiny_model_dir):
    _, items = examples(tiny_model_dir, count=5)
    stream = BatchStream(items, batch_size=2, seed=0, group_by_length=False)
    assert stream.batches_per_epoch == 3
    first_pass = [[e.record_id for e in stream.get(i)] for i in range(7)]
    again = BatchStream(items, batch_size=2, seed=0, group_by_length=False)
    assert [[e.record_id for e in again.get(i)] for i in (6, 2, 0)] == [
        first_pass[6],
        first_pass[2],
        first_pass[0],
    ]
    assert sorted(r for batch in first_pass[:3] for r in batch) == sorted(e.record_id for e in items)
