"""The compact embedding bag computes what PyTorch's sparse embedding bag computes, with one gradient row per
distinct id instead of one per lookup."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.compact_bags import CompactEmbeddingBag


def _bags(seed: int, rows: int = 50, n_bags: int = 6):
    """Bags with repeated ids inside and across bags, as n-grams of long texts have."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 40, (n_bags,), generator=g)
    ids = torch.randint(0, rows, (int(lengths.sum()),), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    weights = torch.rand(len(ids), generator=g)
    return ids, offsets, weights


def _pair(rows: int = 50, dim: int = 8):
    compact = CompactEmbeddingBag(rows, dim)
    plain = nn.EmbeddingBag(rows, dim, mode="sum", sparse=True)
    plain.weight.data.copy_(compact.weight.data)
    return compact, plain


def test_forward_and_gradient_match_the_plain_sparse_bag():
    compact, plain = _pair()
    ids, offsets, weights = _bags(0)
    target = torch.randn(len(offsets), 8)
    out_c = compact(ids, offsets, per_sample_weights=weights)
    out_p = plain(ids, offsets, per_sample_weights=weights)
    assert torch.equal(out_c, out_p)  # the same rows summed in the same order
    (out_c * target).sum().backward()
    (out_p * target).sum().backward()
    g_c, g_p = compact.weight.grad, plain.weight.grad.coalesce()
    # one row per distinct id, sorted (autograd's accumulation drops the coalesced flag, not the order)
    assert g_c._nnz() == len(torch.unique(ids)) < plain.weight.grad._nnz() == len(ids)
    assert torch.equal(g_c._indices(), g_p._indices())
    torch.testing.assert_close(g_c._values(), g_p._values())


def test_sparse_adam_trains_the_same_table_over_steps_and_shared_calls():
    """Like the towers' shared text table: two calls per step (query side, document side), then SparseAdam."""
    compact, plain = _pair()
    opts = [torch.optim.SparseAdam(m.parameters(), lr=0.05) for m in (compact, plain)]
    for step in range(5):
        (q_ids, q_off, q_w), (d_ids, d_off, d_w) = _bags(2 * step), _bags(2 * step + 1)
        for module, opt in zip((compact, plain), opts):
            opt.zero_grad(set_to_none=True)
            q = module(q_ids, q_off, per_sample_weights=q_w)
            d = module(d_ids, d_off, per_sample_weights=d_w)
            (q @ d.T).logsumexp(dim=1).sum().backward()
            opt.step()
    torch.testing.assert_close(compact.weight, plain.weight)
    assert not torch.equal(compact.weight, _pair()[0].weight)  # it did train


def test_without_gradients_it_is_the_plain_lookup_and_its_state_loads_into_the_plain_module():
    compact, plain = _pair()
    ids, offsets, weights = _bags(3)
    with torch.no_grad():
        assert torch.equal(compact(ids, offsets, per_sample_weights=weights),
                           plain(ids, offsets, per_sample_weights=weights))
    fresh = nn.EmbeddingBag(50, 8, mode="sum", sparse=True)
    fresh.load_state_dict(compact.state_dict())
    assert torch.equal(fresh.weight, compact.weight)


def test_a_two_tower_training_step_is_the_same_with_either_gradient():
    from bench.toy import location_task
    from models.batches import TrainingData
    from models.config import LossConfig, ModelConfig
    from models.objective import RetrievalObjective
    from models.towers import TwoTowerModel

    examples, documents = location_task(n_names=8, n_cities=6, n_examples=600, seed=2)
    train = examples[examples["split"] == "train"]
    cfg = ModelConfig(trigram_buckets=4096, word_buckets=4096, bigram_buckets=4096, context_buckets=1024)
    loss_cfg = LossConfig(negatives="mixed", n_corpus_negatives=32)
    states = []
    for compact in (True, False):
        torch.manual_seed(0)
        model = TwoTowerModel(cfg)
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        tables = [m for m in model.modules() if isinstance(m, CompactEmbeddingBag)]
        assert len(tables) >= 2  # the towers' text and context tables are compact ones
        for m in tables:
            m.compact_gradient = compact
        data = TrainingData(model, train, documents, loss_cfg)
        objective = RetrievalObjective(model, loss_cfg)
        opt_s = torch.optim.SparseAdam(model.sparse_parameters(), lr=0.01)
        opt_d = torch.optim.Adam(model.dense_parameters(), lr=0.001)
        for step in range(3):
            rows = np.arange(step * 64, (step + 1) * 64)
            loss = objective(data.batch(rows, np.random.default_rng([0, step])))
            opt_s.zero_grad(set_to_none=True)
            opt_d.zero_grad(set_to_none=True)
            loss.backward()
            opt_s.step()
            opt_d.step()
        states.append(model.state_dict())
        assert not torch.equal(states[-1]["query_tower.text.weight"], initial["query_tower.text.weight"])
    for name, value in states[0].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, states[1][name], msg=name)
