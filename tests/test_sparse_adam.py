"""RowSparseAdam gives torch.optim.SparseAdam's parameters and moments bit for bit, and shares its state."""

from __future__ import annotations

import pytest
import torch

from models.sparse_adam import RowSparseAdam


def row_gradient(gen: torch.Generator, rows: int, dim: int, lookups: int) -> torch.Tensor:
    """A sparse gradient like an embedding bag's: whole rows, repeated ids (not coalesced), sometimes none."""
    ids = torch.randint(0, rows, (lookups,), generator=gen)
    values = torch.randn(lookups, dim, generator=gen)
    return torch.sparse_coo_tensor(ids.unsqueeze(0), values, (rows, dim))


def element_gradient(gen: torch.Generator, shape: tuple[int, int], n: int) -> torch.Tensor:
    """Sparse over both dimensions: PyTorch's own implementation handles it."""
    idx = torch.stack([torch.randint(0, s, (n,), generator=gen) for s in shape])
    return torch.sparse_coo_tensor(idx, torch.randn(n, generator=gen), shape)


def parameters(gen: torch.Generator) -> list[torch.nn.Parameter]:
    """An embedding table, a 1-d table and a small matrix with element-sparse gradients."""
    return [torch.nn.Parameter(torch.randn(50, 8, generator=gen)), torch.nn.Parameter(torch.randn(30, generator=gen)),
            torch.nn.Parameter(torch.randn(6, 5, generator=gen))]


def steps(opt, params, gen: torch.Generator, first: int, last: int) -> None:
    table, bias, grid = params
    for step in range(first, last):
        table.grad = row_gradient(gen, 50, 8, lookups=0 if step == 2 else 40)  # step 2: an empty gradient
        bias.grad = torch.sparse_coo_tensor(torch.randint(0, 30, (1, 12), generator=gen),
                                            torch.randn(12, generator=gen), (30,))
        grid.grad = element_gradient(gen, (6, 5), 7)
        opt.step()


def run(opt_class, n: int, **kw):
    gen = torch.Generator().manual_seed(0)
    params = parameters(gen)
    opt = opt_class(params, lr=0.05, **kw)
    steps(opt, params, gen, 0, n)
    return params, opt


def assert_same(a_params, a_opt, b_params, b_opt):
    for pa, pb in zip(a_params, b_params):
        assert torch.equal(pa.data, pb.data)
        sa, sb = a_opt.state[pa], b_opt.state[pb]
        assert sa["step"] == sb["step"]
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


@pytest.mark.parametrize("maximize", [False, True])
def test_updates_are_sparse_adams_bit_for_bit(maximize):
    ours, ours_opt = run(RowSparseAdam, 6, maximize=maximize)
    torch_, torch_opt = run(torch.optim.SparseAdam, 6, maximize=maximize)
    assert_same(ours, ours_opt, torch_, torch_opt)
    moved, _ = run(RowSparseAdam, 5, maximize=maximize)  # one step fewer differs: the test can fail
    assert not torch.equal(moved[0].data, ours[0].data)


@pytest.mark.parametrize("first, then", [(torch.optim.SparseAdam, RowSparseAdam),
                                         (RowSparseAdam, torch.optim.SparseAdam)])
def test_a_run_resumes_from_the_other_optimizers_state(first, then):
    straight, straight_opt = run(torch.optim.SparseAdam, 5)
    gen = torch.Generator().manual_seed(0)
    params = parameters(gen)
    opt = first(params, lr=0.05)
    steps(opt, params, gen, 0, 3)
    resumed = then(params, lr=0.05)
    resumed.load_state_dict(opt.state_dict())
    steps(resumed, params, gen, 3, 5)
    assert_same(straight, straight_opt, params, resumed)
    assert resumed.state[params[0]]["step"] == 5


def test_dense_gradients_are_refused():
    p = torch.nn.Parameter(torch.zeros(4, 2))
    p.grad = torch.ones(4, 2)
    with pytest.raises(RuntimeError, match="dense gradients"):
        RowSparseAdam([p]).step()
