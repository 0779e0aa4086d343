"""What the student keeps for the backward pass: no copies that change nothing but memory."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from components.common.config import from_dict
from components.train import Config
from components.train.modeling import add_lora


def saved_bytes_loss_and_grads(model, input_ids):
    """Bytes of the activations autograd keeps (each storage once, weights excluded), the loss, the grads."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with (
        torch.autocast("cpu", dtype=torch.bfloat16),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    return sum(kept.values()), loss.detach(), grads


def test_adapters_under_autocast_keep_no_fp32_copy_of_their_inputs(tiny_model_dir, tmp_path):
    config = from_dict(
        Config,
        {"student_dir": str(tiny_model_dir), "data_dir": "d", "output_dir": "o", "tensorboard_dir": "t"},
    )
    input_ids = torch.randint(0, 200, (4, 48), generator=torch.Generator().manual_seed(0))
    results = []
    for autocast in (False, True):
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
        results.append(saved_bytes_loss_and_grads(add_lora(base, config.lora, autocast=autocast), input_ids))
    (peft_default, loss_default, grads_default), (ours, loss, grads) = results
    assert ours < 0.9 * peft_default
    # The forward pass is the same computation; the backward pass sums the branches' input gradients in
    # bf16 instead of fp32, so they agree to bf16 rounding.
    torch.testing.assert_close(loss, loss_default)
    for grad, reference in zip(grads, grads_default, strict=True):
        torch.testing.assert_close(grad, reference, atol=1e-3, rtol=1.6e-2)
