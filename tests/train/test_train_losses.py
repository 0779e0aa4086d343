"""The KD losses: correct divergences, and the chunked computation equal to the unchunked one (grads too)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from components.train.losses import Divergence, chunked_token_losses, divergence, sparse_forward_kl

VOCAB, WIDTH, TOKENS = 300, 16, 77


def setup(seed: int = 0):
    torch.manual_seed(seed)
    head = torch.nn.Linear(WIDTH, VOCAB, bias=False)
    teacher_head = torch.nn.Linear(24, VOCAB, bias=False).requires_grad_(False)
    hidden = torch.randn(TOKENS, WIDTH, requires_grad=True)
    teacher_hidden = torch.randn(TOKENS, 24)
    targets = torch.randint(0, VOCAB, (TOKENS,))
    return head, teacher_head, hidden, teacher_hidden, targets


def loss_and_grads(chunk_size: int, spec: Divergence, sparse: bool = False):
    head, teacher_head, hidden, teacher_hidden, targets = setup()
    kwargs = {}
    if sparse:
        ids = torch.stack(
            [torch.randperm(VOCAB, generator=torch.Generator().manual_seed(i))[:5] for i in range(TOKENS)]
        )
        logprobs = F.log_softmax(torch.randn(TOKENS, 6, generator=torch.Generator().manual_seed(1)), -1)[
            :, :5
        ]
        mask = (torch.arange(TOKENS) % 7 != 0).float()
        kwargs = {"topk_ids": ids, "topk_logprobs": logprobs, "topk_mask": mask}
    else:
        kwargs = {"teacher_hidden": teacher_hidden, "teacher_head": teacher_head}
    ce, kd = chunked_token_losses(hidden, targets, head, chunk_size, spec=spec, **kwargs)
    (0.3 * ce + 0.7 * kd).backward()
    return ce.detach(), kd.detach(), hidden.grad.clone(), head.weight.grad.clone()


SPECS = [
    Divergence("forward_kl", temperature=2.0),
    Divergence("reverse_kl"),
    Divergence("jsd", beta=0.3, temperature=1.5),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_chunked_loss_and_gradients_equal_the_unchunked_ones(spec):
    whole = loss_and_grads(0, spec)
    chunked = loss_and_grads(16, spec)
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_chunked_sparse_topk_loss_and_gradients_equal_the_unchunked_ones():
    whole = loss_and_grads(0, Divergence(), sparse=True)
    chunked = loss_and_grads(10, Divergence(), sparse=True)
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_cross_entropy_is_the_summed_token_cross_entropy():
    head, _, hidden, _, targets = setup()
    ce, kd = chunked_token_losses(hidden, targets, head, 8)
    torch.testing.assert_close(ce, F.cross_entropy(head(hidden), targets, reduction="sum"))
    assert kd == 0


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
