"""Batches: packed rows give every record exactly the logits it gets alone; the order is reproducible."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.train.batching import BatchStream, collate_packed, collate_padded, epoch_batches, pack_rows
from components.train.data import IGNORE, Encoder, encode_records
from components.train.losses import Divergence
from components.train.objective import DistillObjective
from tests.train.conftest import reversal_records


def examples(tiny_model_dir, count=6):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return tokenizer, encode_records(Encoder(tokenizer, 128), reversal_records(count, seed=3))


def test_packed_rows_never_attend_across_records(tiny_model_dir):
    tokenizer, items = examples(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    packed = collate_packed(items, tokenizer.pad_token_id, max_length=128)
    assert packed.input_ids.shape[0] < len(items), "several records share a row"
    with torch.no_grad():
        packed_logits = model(
            input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False
        ).logits
        for row in range(packed.input_ids.shape[0]):
            starts = (packed.position_ids[row] == 0).nonzero().flatten().tolist()
            for start, end in zip(starts, starts[1:] + [packed.input_ids.shape[1]], strict=True):
                alone = packed.input_ids[row, start:end]
                if (alone == tokenizer.pad_token_id).all():
                    continue
                reference = model(input_ids=alone[None]).logits[0]
                torch.testing.assert_close(packed_logits[row, start:end], reference, atol=1e-5, rtol=1e-5)


def test_the_objective_gives_the_same_loss_packed_and_padded(tiny_model_dir):
    tokenizer, items = examples(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    objective = DistillObjective(model, Divergence(), chunk_size=16)
    padded = collate_padded(items, tokenizer.pad_token_id)
    packed = collate_packed(items, tokenizer.pad_token_id, max_length=128)
    with torch.no_grad():
        loss_padded = objective(**padded.model_inputs(torch.device("cpu")), labels=padded.labels)["ce_sum"]
        loss_packed = objective(**packed.model_inputs(torch.device("cpu")), labels=packed.labels)["ce_sum"]
    torch.testing.assert_close(loss_packed, loss_padded, atol=1e-4, rtol=1e-5)


def test_packing_keeps_every_scored_token_and_scores_nothing_across_a_boundary(tiny_model_dir):
    tokenizer, items = examples(tiny_model_dir)
    padded = collate_padded(items, tokenizer.pad_token_id)
    packed = collate_packed(items, tokenizer.pad_token_id, max_length=128)
    assert packed.num_scored == padded.num_scored == sum(e.num_scored for e in items)
    assert (packed.labels[packed.position_ids == 0] == IGNORE).all()
    assert packed.num_tokens == padded.num_tokens
    # Real tokens are marked in both layouts; only the packed rows' tails are padding.
    assert int(packed.token_mask.sum()) == int(padded.token_mask.sum()) == packed.num_tokens


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
