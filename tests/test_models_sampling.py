"""Negative sampling: mixed negatives, accidental-hit masking, log-Q values, extra negatives."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from models.losses import LossInputs, SoftmaxLoss
from models.sampling import (
    ExtraNegatives,
    NegativeSampler,
    batch_log_q,
    click_probabilities,
    uniform_log_q,
)


def test_mixed_sampler_draws_corpus_documents_and_masks_accidental_hits():
    corpus = np.arange(5)  # a tiny corpus makes accidental hits certain
    pos_ids = np.array([0, 3, 3, 7])  # 3 appears twice in the batch; 7 is not in the corpus
    probs = click_probabilities(pos_ids, 8)
    s = NegativeSampler("mixed", 40, corpus, probs).sample(pos_ids, np.random.default_rng(0))
    assert len(s.corpus_rows) == 40 and set(s.corpus_rows) <= set(corpus)
    assert s.shared_ids[:4].tolist() == pos_ids.tolist()  # batch positives come first
    mask = s.hit_mask(pos_ids)  # (B, B + B')
    assert mask.shape == (4, 44)
    expected = s.shared_ids[None, :] != pos_ids[:, None]
    assert np.array_equal(mask, expected)
    assert (~mask[0, 4:]).sum() == (s.shared_ids[4:] == 0).sum() > 0  # corpus draws of doc 0 masked for row 0
    assert not mask[1, 2] and not mask[2, 1]  # duplicate positives in the batch are not negatives
    assert mask[3].all() == False and mask[3, 4:].all()  # noqa: E712 - doc 7 is never drawn from the corpus

    # the loss really ignores masked candidates: moving them does not change it
    e = 4
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(4, e, generator=g), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(44, e, generator=g), dim=-1)
    ids = torch.from_numpy(s.shared_ids)
    x = LossInputs(q=q[:1], d_pos=d[:1], pos_ids=ids[:1], d_shared=d, shared_ids=ids)  # query 0 alone
    moved = d.clone()
    hit_cols = np.flatnonzero((s.shared_ids[4:] == 0)) + 4
    moved[hit_cols] = q[0]  # a masked candidate identical to query 0 would dominate if it counted
    loss = SoftmaxLoss(0.1, False)
    x_moved = LossInputs(q=q[:1], d_pos=d[:1], pos_ids=ids[:1], d_shared=moved, shared_ids=ids)
    assert loss(x_moved).item() == pytest.approx(loss(x).item(), abs=1e-6)
    free_col = int(np.flatnonzero(s.shared_ids[4:] != 0)[0]) + 4  # an ordinary negative does count
    moved2 = d.clone()
    moved2[free_col] = q[0]
    x_moved2 = LossInputs(q=q[:1], d_pos=d[:1], pos_ids=ids[:1], d_shared=moved2, shared_ids=ids)
    assert loss(x_moved2).item() > loss(x).item() + 1e-3


def test_log_q_values_follow_click_frequency_and_uniform_corpus():
    pos_ids = np.array([0, 0, 0, 1])  # doc 0 clicked 3 of 4 times
    probs = click_probabilities(pos_ids, 3)
    assert probs.tolist() == [0.75, 0.25, 0.0]
    assert batch_log_q(probs, np.array([0, 1]), 8).tolist() == pytest.approx([math.log(6), math.log(2)])
    assert uniform_log_q(16, 1000) == pytest.approx(math.log(16 / 1000))
    s = NegativeSampler("mixed", 16, np.arange(1000), probs).sample(np.array([0, 1]), np.random.default_rng(1))
    assert s.pos_logq.tolist() == pytest.approx([math.log(1.5), math.log(0.5)], rel=1e-6)
    assert np.allclose(s.shared_logq[2:], math.log(16 / 1000))


def test_batch_mode_has_no_corpus_draws_and_sampling_is_seeded():
    probs = click_probabilities(np.arange(4), 4)
    s = NegativeSampler("batch", 99, np.arange(10), probs).sample(np.arange(4), np.random.default_rng(0))
    assert len(s.corpus_rows) == 0 and s.shared_ids.tolist() == [0, 1, 2, 3]
    mixed = NegativeSampler("mixed", 8, np.arange(100), probs)
    a = mixed.sample(np.arange(4), np.random.default_rng([3, 1])).corpus_rows
    b = mixed.sample(np.arange(4), np.random.default_rng([3, 1])).corpus_rows
    c = mixed.sample(np.arange(4), np.random.default_rng([3, 2])).corpus_rows
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    with pytest.raises(ValueError, match="'batch' or 'mixed'"):
        NegativeSampler("hard", 1, np.arange(3), probs)


def test_extra_negatives_drop_unknown_ids_and_pick_distinct_ones():
    examples = pd.DataFrame({
        "hard_negatives": [["a", "b", "zzz"], [], None, ["c"]],
        "random_negatives": [["c"], ["a", "b", "c", "d"], ["d"], None],
    })
    row_of = pd.Series([0, 1, 2, 3], index=["a", "b", "c", "d"])
    extra = ExtraNegatives(examples, ("hard_negatives", "random_negatives"), row_of)
    assert extra.n_dropped == 1  # "zzz" is not in the document table
    picked = extra.pick(np.array([0, 1, 2, 3]), 2, np.random.default_rng(0))
    assert picked.shape == (4, 2)
    assert set(picked[0]) <= {0, 1, 2} and len(set(picked[0])) == 2
    assert set(picked[1]) <= {0, 1, 2, 3} and len(set(picked[1])) == 2
    assert picked[2].tolist() == [3, -1] and picked[3].tolist() == [2, -1]
    with pytest.raises(ValueError, match="not in the examples"):
        ExtraNegatives(examples, ("impressed_negatives",), row_of)
