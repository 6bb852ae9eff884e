"""An embedding bag whose sparse gradient has one row per distinct id of the batch.

``nn.EmbeddingBag(sparse=True)`` returns a gradient with one row per *lookup*: a batch of long texts (64
SciFact claims, 320 abstracts of up to 2,048 characters) looks up about 520,000 n-gram rows, 48,000 of them
distinct, and ``SparseAdam`` must coalesce that 520,000-row sparse tensor (sort the ids, sum the duplicates)
before its update. Here the lookups go through a compact table instead: the batch's distinct rows are
gathered once (``torch.unique``), the bag sums read that compact table with remapped ids, and its dense
gradient goes back to the big table as a sparse tensor of distinct, sorted rows (autograd's accumulation
drops its coalesced flag, so SparseAdam still coalesces it, over 48,000 rows instead of 520,000).
The forward values are the same lookups summed in the same order, and the gradient is the same sum per
row, so training computes the same model up to floating-point summation order (``tests/test_compact_bags.py``).
``bench/train_throughput.py`` measures the steps of both side by side (``--workload scifact``: long texts).

Outside training (no gradient needed) the plain lookup runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _GatherRows(torch.autograd.Function):
    """``weight[rows]`` for sorted distinct ``rows``, whose gradient is a coalesced sparse tensor."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.shape = weight.shape
        ctx.save_for_backward(rows)
        return weight.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (rows,) = ctx.saved_tensors
        # rows come from torch.unique (sorted, distinct): the tensor is coalesced by construction
        sparse = torch.sparse_coo_tensor(rows.unsqueeze(0), grad, ctx.shape, is_coalesced=True,
                                         check_invariants=False)
        return sparse, None


class CompactEmbeddingBag(nn.EmbeddingBag):
    """``nn.EmbeddingBag(mode="sum", sparse=True)`` whose sparse gradient has one row per distinct id, sorted.

    Same parameters and state dict as the plain module (checkpoints load into either). Set
    ``compact_gradient = False`` to get PyTorch's per-lookup gradient (the benchmark's comparison)."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__(num_embeddings, embedding_dim, mode="sum", sparse=True)
        self.compact_gradient = True

    def forward(self, input: torch.Tensor, offsets: torch.Tensor | None = None,
                per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        if not (self.compact_gradient and self.weight.requires_grad and torch.is_grad_enabled()):
            return super().forward(input, offsets, per_sample_weights)
        rows, local = torch.unique(input, sorted=True, return_inverse=True)
        table = _GatherRows.apply(self.weight, rows)
        return F.embedding_bag(local, table, offsets, mode="sum", per_sample_weights=per_sample_weights,
                               include_last_offset=self.include_last_offset)
