"""The token losses: correct divergences, and both chunked paths (gradient in forward, checkpointing) equal
to the unchunked computation, gradients included, without keeping full-vocabulary logits for backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from components.train.losses import Divergence, divergence, sparse_forward_kl, token_losses

VOCAB, WIDTH, TOKENS = 300, 16, 77
CE_WEIGHT, KD_WEIGHT = 0.3, 0.7


def setup(seed: int = 0):
    torch.manual_seed(seed)
    head = torch.nn.Linear(WIDTH, VOCAB, bias=False)
    teacher_head = torch.nn.Linear(24, VOCAB, bias=False).requires_grad_(False)
    hidden = torch.randn(TOKENS, WIDTH, requires_grad=True)
    teacher_hidden = torch.randn(TOKENS, 24)
    targets = torch.randint(0, VOCAB, (TOKENS,))
    return head, teacher_head, hidden, teacher_hidden, targets


def sparse_targets() -> dict[str, torch.Tensor]:
    ids = torch.stack(
        [torch.randperm(VOCAB, generator=torch.Generator().manual_seed(i))[:5] for i in range(TOKENS)]
    )
    logprobs = F.log_softmax(torch.randn(TOKENS, 6, generator=torch.Generator().manual_seed(1)), -1)[:, :5]
    mask = (torch.arange(TOKENS) % 7 != 0).float()
    return {"topk_ids": ids, "topk_logprobs": logprobs, "topk_mask": mask}


# The KD source of each case: none (CE only), a local teacher with each divergence, or stored top-k.
KINDS = {
    "ce": None,
    "forward_kl": Divergence("forward_kl", temperature=2.0),
    "reverse_kl": Divergence("reverse_kl", temperature=2.0),
    "jsd": Divergence("jsd", beta=0.3, temperature=2.0),
    "topk": "topk",
}


def kd_inputs(kind: str, teacher_head, teacher_hidden) -> dict:
    source = KINDS[kind]
    if source is None:
        return {}
    if source == "topk":
        return sparse_targets()
    return {"teacher_hidden": teacher_hidden, "teacher_head": teacher_head, "spec": source}


def mixed_losses(hidden, targets, head, chunk_size, **kwargs):
    return token_losses(hidden, targets, head, chunk_size, ce_weight=CE_WEIGHT, kd_weight=KD_WEIGHT, **kwargs)


def losses_and_grads(kind: str, chunk_size: int, fused: bool = True):
    """(loss, ce_sum, kd_sum, grad of hidden, grad of the head's weight) after backward of loss / 2."""
    head, teacher_head, hidden, teacher_hidden, targets = setup()
    out = mixed_losses(
        hidden, targets, head, chunk_size, fused=fused, **kd_inputs(kind, teacher_head, teacher_hidden)
    )
    # The trainer scales the loss (by accum / scored): the stored gradients must follow.
    (out.loss / 2).backward()
    return out.loss.detach(), out.ce_sum, out.kd_sum, hidden.grad, head.weight.grad


def assert_all_close(actual, expected, tolerance: float = 1e-5):
    for a, b in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, b, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "checkpoint"])
@pytest.mark.parametrize("chunk_size", [16, 7, 100], ids=["chunk16-ragged", "chunk7-divides", "one-chunk"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_chunked_losses_and_gradients_equal_the_unchunked_ones(kind, chunk_size, fused):
    reference = losses_and_grads(kind, 0)
    chunked = losses_and_grads(kind, chunk_size, fused)
    assert_all_close(chunked, reference)
    loss, ce, kd = reference[:3]
    torch.testing.assert_close(loss, CE_WEIGHT * ce + KD_WEIGHT * kd)
    assert (kd == 0) == (kind == "ce")
    assert not ce.requires_grad and not kd.requires_grad


def test_a_tied_head_gets_the_sum_of_its_embedding_and_head_gradients():
    def run(chunk_size: int):
        head, teacher_head, _, teacher_hidden, targets = setup()
        embedding = torch.nn.Embedding(VOCAB, WIDTH)
        head.weight = embedding.weight
        hidden = torch.tanh(embedding(targets.roll(1)) * 3)
        out = mixed_losses(
            hidden, targets, head, chunk_size, **kd_inputs("forward_kl", teacher_head, teacher_hidden)
        )
        out.loss.backward()
        return out.loss.detach(), embedding.weight.grad

    assert_all_close(run(16), run(0))


def test_a_frozen_head_gets_no_gradient_and_the_hidden_states_still_do():
    def run(chunk_size: int):
        head, teacher_head, hidden, teacher_hidden, targets = setup()
        head.requires_grad_(False)
        out = token_losses(
            hidden, targets, head, chunk_size, kd_weight=0.5, **kd_inputs("jsd", teacher_head, teacher_hidden)
        )
        out.loss.backward()
        assert head.weight.grad is None
        return out.loss.detach(), hidden.grad

    assert_all_close(run(16), run(0))


def test_bf16_hidden_states_under_autocast_get_a_bf16_gradient_close_to_the_unchunked_one():
    def run(chunk_size: int):
        head, teacher_head, hidden, teacher_hidden, targets = setup()
        hidden = hidden.detach().bfloat16().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = token_losses(
                hidden, targets, head, chunk_size, kd_weight=1.0, **kd_inputs("topk", None, None)
            )
        out.loss.backward()
        assert hidden.grad.dtype == torch.bfloat16 and head.weight.grad.dtype == torch.float32
        return out.loss.detach(), hidden.grad.float(), head.weight.grad

    assert_all_close(run(16), run(0), tolerance=2e-2)


def test_a_bf16_head_gets_a_bf16_gradient():
    head, _, hidden, _, targets = setup()
    head.bfloat16()
    token_losses(hidden.detach().bfloat16().requires_grad_(), targets, head, 16).loss.backward()
    assert head.weight.grad.dtype == torch.bfloat16 and torch.isfinite(head.weight.grad).all()


def largest_saved_tensor(chunk_size: int, fused: bool) -> int:
    """The most elements in one tensor that autograd keeps for the backward pass."""
    head, teacher_head, hidden, teacher_hidden, targets = setup()
    sizes = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = token_losses(
            hidden,
            targets,
            head,
            chunk_size,
            kd_weight=1.0,
            fused=fused,
            **kd_inputs("forward_kl", teacher_head, teacher_hidden),
        )
    out.loss.backward()
    return max(sizes)


def test_only_the_unchunked_path_keeps_full_vocabulary_logits_for_backward():
    chunk = 32  # more rows than WIDTH: a chunk's logits outsize the head's weight
    assert largest_saved_tensor(0, fused=True) >= TOKENS * VOCAB
    assert largest_saved_tensor(chunk, fused=True) < chunk * VOCAB
    assert largest_saved_tensor(chunk, fused=False) < chunk * VOCAB


def test_without_grad_the_chunked_sums_equal_the_unchunked_ones():
    head, teacher_head, hidden, teacher_hidden, targets = setup()
    inputs = kd_inputs("reverse_kl", teacher_head, teacher_hidden)
    with torch.no_grad():
        chunked = token_losses(hidden, targets, head, 16, kd_weight=1.0, **inputs)
        whole = token_losses(hidden, targets, head, 0, kd_weight=1.0, **inputs)
    assert not chunked.loss.requires_grad
    assert_all_close(vars(chunked).values(), vars(whole).values())


def test_backpropagating_the_fused_loss_twice_says_to_use_the_checkpoint_path():
    head, _, hidden, _, targets = setup()
    loss = token_losses(hidden, targets, head, 16).loss
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="fused=False"):
        loss.backward()


def test_cross_entropy_is_the_summed_token_cross_entropy():
    head, _, hidden, _, targets = setup()
    out = token_losses(hidden, targets, head, 8)
    torch.testing.assert_close(out.ce_sum, F.cross_entropy(head(hidden), targets, reduction="sum"))
    torch.testing.assert_close(out.loss, out.ce_sum)
    assert out.kd_sum == 0


def test_divergences_vanish_for_identical_distributions_and_are_positive_otherwise():
    logits = torch.randn(10, VOCAB)
    other = torch.randn(10, VOCAB)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        spec = Divergence(kind, beta=0.5)
        assert divergence(logits, logits, spec).abs().max() < 1e-5
        assert (divergence(other, logits, spec) > 0).all()


def test_forward_and_reverse_kl_match_the_definitions_and_jsd_endpoints():
    student, teacher = torch.randn(6, 50), torch.randn(6, 50)
    log_q, log_p = F.log_softmax(student, -1), F.log_softmax(teacher, -1)
    forward = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    reverse = F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(divergence(student, teacher, Divergence("forward_kl")), forward)
    torch.testing.assert_close(divergence(student, teacher, Divergence("reverse_kl")), reverse)
    torch.testing.assert_close(divergence(student, teacher, Divergence("jsd", beta=0.0)), forward)
    torch.testing.assert_close(divergence(student, teacher, Divergence("jsd", beta=1.0)), reverse)
    # Temperature T compares softened distributions and scales by T^2.
    soft = F.kl_div(
        F.log_softmax(student / 2, -1), F.log_softmax(teacher / 2, -1), log_target=True, reduction="none"
    )
    torch.testing.assert_close(
        divergence(student, teacher, Divergence("forward_kl", temperature=2.0)), 4 * soft.sum(-1)
    )


def test_sparse_kl_over_the_whole_vocabulary_is_the_dense_forward_kl():
    student, teacher = torch.randn(4, 30), torch.randn(4, 30)
    log_p = F.log_softmax(teacher, -1)
    ids = torch.arange(30).repeat(4, 1)
    dense = divergence(student, teacher, Divergence("forward_kl"))
    torch.testing.assert_close(sparse_forward_kl(student, ids, log_p), dense, atol=1e-5, rtol=1e-5)


def test_sparse_kl_counts_the_remaining_mass_as_one_bucket():
    student = torch.log(torch.tensor([[0.5, 0.2, 0.2, 0.1]]))
    ids = torch.tensor([[0, 1]])
    # The teacher's top 2 hold 0.5 and 0.2, the rest 0.3: the same as the student's -> zero loss.
    assert sparse_forward_kl(student, ids, torch.log(torch.tensor([[0.5, 0.2]]))).abs() < 1e-6
    # Unused slots (-inf) add nothing.
    padded = sparse_forward_kl(
        student,
        torch.tensor([[0, 1, 3]]),
        torch.tensor([[0.5, 0.2, float("-inf")]]).log().nan_to_num(float("-inf")),
    )
    assert torch.isfinite(padded).all()
    teacher_rest = torch.tensor([[0.7, 0.2]]).log()  # the rest holds 0.1 against the student's 0.3
    expected = 0.7 * torch.log(torch.tensor(0.7 / 0.5)) + 0.1 * torch.log(torch.tensor(0.1 / 0.3))
    torch.testing.assert_close(sparse_forward_kl(student, ids, teacher_rest), expected.reshape(1))
