"""The training task: towers embed a :class:`~models.batches.TrainBatch`, the loss scores it.

Kept apart from the towers (which serve) and from the loop (which schedules): the model is what gets
deployed, the objective only exists while training.
"""

from __future__ import annotations

import torch
from torch import nn

from models.batches import TrainBatch
from models.config import LossConfig
from models.losses import LossInputs, build_loss
from models.towers import TwoTowerModel


class RetrievalObjective(nn.Module):
    def __init__(self, model: TwoTowerModel, loss: LossConfig):
        super().__init__()
        self.model = model
        self.loss_fn = build_loss(loss)

    def loss_inputs(self, b: TrainBatch) -> LossInputs:
        q = self.model.query_tower(b.queries)  # (B, E)
        d_pos = self.model.doc_tower(b.positives)  # (B, E)
        d_shared, d_extra, extra_ids = d_pos, None, None
        if b.negatives is not None:
            d_neg = self.model.doc_tower(b.negatives)  # (U, E) unique corpus rows of this step
            d_shared = torch.cat([d_pos, d_neg[b.corpus_index]])  # (B + B', E)
            if b.extra_index is not None:
                d_extra, extra_ids = d_neg[b.extra_index], b.extra_ids  # (B, K, E), (B, K)
        return LossInputs(
            q=q, d_pos=d_pos, pos_ids=b.pos_ids, d_shared=d_shared, shared_ids=b.shared_ids,
            shared_logq=b.shared_logq, pos_logq=b.pos_logq, d_extra=d_extra, extra_ids=extra_ids,
        )

    def forward(self, b: TrainBatch) -> torch.Tensor:
        return self.loss_fn(self.loss_inputs(b))
