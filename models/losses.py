"""Losses of the two-tower objective: the paper's triplet loss and a sampled softmax.

Each loss is a small module whose ``forward`` takes the batch's embeddings (:class:`LossInputs`); pure
functions do the work, so each step can be checked by hand on tiny tensors:
- :func:`score_candidates`: cosines of every query with its positive and its negatives, and which
  negatives are usable (a negative with the query's own positive doc_id is an accidental hit: masked);
- :func:`triplet_loss`: eq. 2 of the paper, ``max(0, D(q,d+) - D(q,d-) + m)`` with ``D = 1 - cos``;
- :func:`hardest_negatives`: online hard negative mining (section 6.1.1), the n most similar negatives;
- :func:`softmax_logits` / :func:`sampled_softmax_loss`: ``cos / T - log Q`` with the log-Q correction.

Negatives come in two kinds: *shared* candidates scored against every query of the batch (the batch's own
positives, then B' corpus samples in mixed negative sampling) and *extra* per-example negatives (offline
mined hard negatives, random or impressed ones), shape (B, K).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.config import LossConfig
from models.sampling import accidental_hits

_NEG_INF = float("-inf")


@dataclass
class LossInputs:
    """Embeddings of one training batch (unit norm) and the doc ids needed to mask accidental hits."""

    q: torch.Tensor  # (B, E) query embeddings
    d_pos: torch.Tensor  # (B, E) positive document embeddings
    pos_ids: torch.Tensor  # (B,) int64 doc index of each positive
    d_shared: torch.Tensor  # (M, E) candidates shared by all queries (batch positives, corpus samples)
    shared_ids: torch.Tensor  # (M,) int64
    shared_logq: torch.Tensor | None = None  # (M,) log of each candidate's sampling probability
    pos_logq: torch.Tensor | None = None  # (B,) log-Q of each positive (as a batch candidate)
    d_extra: torch.Tensor | None = None  # (B, K, E) per-example extra negatives
    extra_ids: torch.Tensor | None = None  # (B, K) int64, -1 = padding


@dataclass
class ScoredCandidates:
    pos: torch.Tensor  # (B,) cos(q_i, d+_i)
    neg: torch.Tensor  # (B, N) cos(q_i, negative j); N = M shared + K extra
    mask: torch.Tensor  # (B, N) bool: usable negatives
    shared: torch.Tensor  # (B, N) bool: from the shared pool (subject to online hard mining)
    pos_logq: torch.Tensor | None  # (B,)
    neg_logq: torch.Tensor | None  # (B, N); 0 for extra negatives (not sampled from a known Q)


def score_candidates(x: LossInputs) -> ScoredCandidates:
    b = x.q.shape[0]
    pos = (x.q * x.d_pos).sum(-1)  # (B,)
    neg = x.q @ x.d_shared.T  # (B, M)
    mask = ~accidental_hits(x.pos_ids, x.shared_ids)  # (B, M) accidental hits (and own positive) out
    shared = torch.ones_like(mask)
    logq = None if x.shared_logq is None else x.shared_logq[None, :].expand(b, -1)
    if x.d_extra is not None and x.d_extra.shape[1] > 0:
        neg_e = torch.einsum("be,bke->bk", x.q, x.d_extra)  # (B, K)
        extra_ids = x.extra_ids
        assert extra_ids is not None  # extra negatives come with their doc ids (RetrievalObjective.loss_inputs)
        mask_e = (extra_ids >= 0) & (extra_ids != x.pos_ids[:, None])  # (B, K) padding, hits out
        neg = torch.cat([neg, neg_e], dim=1)
        mask = torch.cat([mask, mask_e], dim=1)
        shared = torch.cat([shared, torch.zeros_like(mask_e)], dim=1)
        if logq is not None:
            logq = torch.cat([logq, torch.zeros_like(neg_e)], dim=1)
    return ScoredCandidates(pos, neg, mask, shared, x.pos_logq, logq)


def hardest_negatives(neg: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """(B, N) bool selecting, per row, the ``n`` usable negatives with the highest cosine."""
    if n <= 0 or n >= neg.shape[1]:
        return mask.clone()
    masked = neg.masked_fill(~mask, _NEG_INF)  # (B, N)
    top = masked.topk(n, dim=1).indices  # (B, n)
    chosen = torch.zeros_like(mask).scatter_(1, top, True)
    return chosen & mask  # rows with fewer than n usable negatives keep only those


def triplet_loss(
    pos: torch.Tensor, neg: torch.Tensor, mask: torch.Tensor, margin: float, reduction: str = "mean"
) -> torch.Tensor:
    """Eq. 2 over the selected triplets: D(q,d+) - D(q,d-) + m = cos(q,d-) - cos(q,d+) + m, clipped at 0."""
    per = F.relu(neg - pos[:, None] + margin)  # (B, N)
    per = per * mask
    if reduction == "sum":
        return per.sum()
    return per.sum() / mask.sum().clamp_min(1)


def softmax_logits(
    pos: torch.Tensor, neg: torch.Tensor, mask: torch.Tensor, temperature: float,
    pos_logq: torch.Tensor | None = None, neg_logq: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, 1 + N) logits, column 0 the positive: ``cos / T - log Q``; unusable negatives -> -inf."""
    logits = torch.cat([pos[:, None], neg], dim=1) / temperature
    if neg_logq is not None:
        pq = pos_logq if pos_logq is not None else torch.zeros_like(pos)
        logits = logits - torch.cat([pq[:, None], neg_logq], dim=1)
    keep = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
    return logits.masked_fill(~keep, _NEG_INF)


def sampled_softmax_loss(logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy with the positive in column 0."""
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target, reduction=reduction)


class TripletLoss(nn.Module):
    """The paper's triplet loss; negatives: the n hardest shared ones per query plus every extra one."""

    def __init__(self, margin: float = 0.2, online_hard_negatives: int = 2, reduction: str = "mean"):
        super().__init__()
        self.margin, self.online_hard_negatives, self.reduction = margin, online_hard_negatives, reduction

    def forward(self, x: LossInputs) -> torch.Tensor:
        s = score_candidates(x)
        with torch.no_grad():
            hard = hardest_negatives(s.neg, s.mask & s.shared, self.online_hard_negatives)
        chosen = hard | (s.mask & ~s.shared)
        return triplet_loss(s.pos, s.neg, chosen, self.margin, self.reduction)

    def get_config_dict(self) -> dict:
        return {"kind": "triplet", "margin": self.margin,
                "online_hard_negatives": self.online_hard_negatives, "reduction": self.reduction}


class SoftmaxLoss(nn.Module):
    """Sampled softmax over the positive and all usable negatives, with optional log-Q correction."""

    def __init__(self, temperature: float = 0.05, logq_correction: bool = True, reduction: str = "mean"):
        super().__init__()
        self.temperature, self.logq_correction, self.reduction = temperature, logq_correction, reduction

    def forward(self, x: LossInputs) -> torch.Tensor:
        s = score_candidates(x)
        logits = softmax_logits(
            s.pos, s.neg, s.mask, self.temperature,
            s.pos_logq if self.logq_correction else None, s.neg_logq if self.logq_correction else None,
        )
        return sampled_softmax_loss(logits, self.reduction)

    def get_config_dict(self) -> dict:
        return {"kind": "softmax", "temperature": self.temperature,
                "logq_correction": self.logq_correction, "reduction": self.reduction}


def build_loss(cfg: LossConfig) -> nn.Module:
    if cfg.kind == "triplet":
        return TripletLoss(cfg.margin, cfg.online_hard_negatives, cfg.reduction)
    if cfg.kind == "softmax":
        return SoftmaxLoss(cfg.temperature, cfg.logq_correction, cfg.reduction)
    raise ValueError(f"loss kind must be 'triplet' or 'softmax', got {cfg.kind!r}")
