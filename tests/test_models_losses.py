"""Losses on tiny tensors with answers computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from models.config import LossConfig
from models.losses import (
    LossInputs,
    SoftmaxLoss,
    TripletLoss,
    build_loss,
    hardest_negatives,
    score_candidates,
    softmax_logits,
    triplet_loss,
)


def unit(cos: float) -> list[float]:
    """A 2-d unit vector whose cosine with (1, 0) is ``cos``."""
    return [cos, math.sqrt(1 - cos * cos)]


def one_query(pos: float, negs: list[float], neg_ids: list[int] | None = None, **kw) -> LossInputs:
    return LossInputs(
        q=torch.tensor([[1.0, 0.0]]),
        d_pos=torch.tensor([unit(pos)]),
        pos_ids=torch.tensor([100]),
        d_shared=torch.tensor([unit(c) for c in negs]),
        shared_ids=torch.tensor(neg_ids if neg_ids is not None else list(range(len(negs)))),
        **kw,
    )


def test_triplet_loss_with_margin_matches_hand_computation():
    # D = 1 - cos: D(q,d+) = 0.2; negatives at cos 0.5 (D=0.5) and 0.9 (D=0.1), margin 0.2
    # max(0, 0.2 - 0.5 + 0.2) = 0;  max(0, 0.2 - 0.1 + 0.2) = 0.3
    x = one_query(0.8, [0.5, 0.9])
    total = TripletLoss(margin=0.2, online_hard_negatives=0, reduction="sum")(x)
    mean = TripletLoss(margin=0.2, online_hard_negatives=0, reduction="mean")(x)
    assert total.item() == pytest.approx(0.3, abs=1e-6)
    assert mean.item() == pytest.approx(0.15, abs=1e-6)
    # a larger margin makes the easy negative count too: (0.2-0.5+0.5) + (0.2-0.1+0.5) = 0.2 + 0.6
    assert TripletLoss(0.5, 0, "sum")(x).item() == pytest.approx(0.8, abs=1e-6)


def test_triplet_pure_function_respects_mask():
    pos = torch.tensor([0.8, 0.1])
    neg = torch.tensor([[0.9, 0.7], [0.3, 0.0]])
    mask = torch.tensor([[True, False], [True, True]])
    # row 0: 0.9-0.8+0.1=0.2 (0.7 masked); row 1: 0.3-0.1+0.1=0.3, 0-0.1+0.1=0
    assert triplet_loss(pos, neg, mask, 0.1, "sum").item() == pytest.approx(0.5, abs=1e-6)
    assert triplet_loss(pos, neg, mask, 0.1, "mean").item() == pytest.approx(0.5 / 3, abs=1e-6)


def test_online_hard_negatives_pick_the_most_similar_usable_ones():
    neg = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.3, 0.2, 0.8, 0.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, False, True]])
    chosen = hardest_negatives(neg, mask, 2)
    assert chosen.tolist() == [[False, True, False, True], [True, True, False, False]]
    assert hardest_negatives(neg, mask, 0).equal(mask)  # 0 = all usable negatives
    # a row with fewer usable negatives than n keeps only those
    few = torch.tensor([[True, False, False, False]])
    assert hardest_negatives(neg[:1], few, 2).tolist() == [[True, False, False, False]]


def test_triplet_uses_only_the_n_hardest_shared_negatives():
    # negatives at cos 0.85, 0.75, 0.6 vs positive 0.8, margin 0.1: terms 0.15, 0.05, 0 -> hardest 1 is 0.15
    x = one_query(0.8, [0.6, 0.85, 0.75])
    assert TripletLoss(0.1, 1, "sum")(x).item() == pytest.approx(0.15, abs=1e-6)
    assert TripletLoss(0.1, 2, "sum")(x).item() == pytest.approx(0.20, abs=1e-6)


def test_softmax_loss_with_temperature_matches_hand_computation():
    x = one_query(0.8, [0.5, 0.9])
    t = 0.5
    z = [0.8 / t, 0.5 / t, 0.9 / t]
    expected = -z[0] + math.log(sum(math.exp(v) for v in z))
    got = SoftmaxLoss(temperature=t, logq_correction=False)(x).item()
    assert got == pytest.approx(expected, abs=1e-5)
    # a colder temperature sharpens: the loss grows because a negative beats the positive
    assert SoftmaxLoss(0.1, False)(x).item() > got


def test_log_q_shifts_each_logit_by_its_log_probability():
    pos = torch.tensor([0.8])
    neg = torch.tensor([[0.5, 0.9]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    pos_logq = torch.tensor([math.log(0.5)])
    neg_logq = torch.tensor([[math.log(2.0), math.log(0.25)]])
    plain = softmax_logits(pos, neg, mask, 0.5)
    corrected = softmax_logits(pos, neg, mask, 0.5, pos_logq, neg_logq)
    shift = (plain - corrected)[0].tolist()
    assert shift == pytest.approx([math.log(0.5), math.log(2.0), math.log(0.25)], abs=1e-6)
    assert plain[0].tolist() == pytest.approx([1.6, 1.0, 1.8], abs=1e-6)
    # through the loss module: shared_logq/pos_logq are used only with logq_correction
    x = one_query(0.8, [0.5, 0.9], shared_logq=neg_logq[0], pos_logq=pos_logq)
    z = [1.6 - math.log(0.5), 1.0 - math.log(2.0), 1.8 - math.log(0.25)]
    expected = -z[0] + math.log(sum(math.exp(v) for v in z))
    assert SoftmaxLoss(0.5, True)(x).item() == pytest.approx(expected, abs=1e-5)


def test_accidental_hits_and_own_positive_are_masked_out():
    # candidate 1 has the query's positive id (100): it must not act as a negative
    x = one_query(0.8, [0.5, 0.99], neg_ids=[7, 100])
    s = score_candidates(x)
    assert s.mask.tolist() == [[True, False]]
    only_easy = one_query(0.8, [0.5], neg_ids=[7])
    for loss in (SoftmaxLoss(0.5, False), TripletLoss(0.5, 0, "sum")):
        assert loss(x).item() == pytest.approx(loss(only_easy).item(), abs=1e-6)


def test_extra_negatives_feed_both_losses_and_padding_is_ignored():
    base = one_query(0.8, [0.5])
    extra = torch.tensor([[unit(0.9), unit(0.0)]])  # (B=1, K=2, E=2)
    with_extra = one_query(0.8, [0.5], d_extra=extra, extra_ids=torch.tensor([[5, -1]]))
    s = score_candidates(with_extra)
    assert s.mask.tolist() == [[True, True, False]]
    assert s.shared.tolist() == [[True, False, False]]
    # triplet, m=0.2: shared 0.5 -> 0; extra 0.9 -> 0.3 (kept even with online n=1 on the shared pool)
    assert TripletLoss(0.2, 1, "sum")(with_extra).item() == pytest.approx(0.3, abs=1e-6)
    assert TripletLoss(0.2, 1, "sum")(base).item() == pytest.approx(0.0, abs=1e-6)
    z = [1.6, 1.0, 1.8]
    expected = -z[0] + math.log(sum(math.exp(v) for v in z))
    assert SoftmaxLoss(0.5, False)(with_extra).item() == pytest.approx(expected, abs=1e-5)


def test_losses_are_differentiable_and_build_from_config():
    q = torch.nn.functional.normalize(torch.randn(4, 3), dim=-1).requires_grad_()
    d = torch.nn.functional.normalize(torch.randn(4, 3), dim=-1)
    x = LossInputs(q=q, d_pos=d, pos_ids=torch.arange(4), d_shared=d, shared_ids=torch.arange(4))
    for cfg in (LossConfig(kind="triplet", margin=0.5), LossConfig(kind="softmax")):
        loss = build_loss(cfg)(x)
        (g,) = torch.autograd.grad(loss, q)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
        assert build_loss(cfg).get_config_dict()["kind"] == cfg.kind


def test_loss_config_rejects_unknown_values():
    with pytest.raises(ValueError, match="triplet"):
        LossConfig(kind="hinge")
    with pytest.raises(ValueError, match="allowed columns"):
        LossConfig(extra_negatives=("clicked",))
