"""Typed configuration of the two-tower model, its training objective and its training run.

Three nested models so that each consumer takes only what it needs: the towers are rebuilt from
:class:`ModelConfig` alone (it travels inside every checkpoint), the objective reads :class:`LossConfig`,
and :func:`models.train.train` reads :class:`TrainConfig`, which holds both.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ModelConfig(BaseModel):
    """Feature tables and tower shapes. Changing any field changes the parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    embedding_dim: int = Field(32, ge=1, le=1024, description="width of every embedding lookup")
    trigram_buckets: int = Field(2**17, ge=1, description="hashed character-trigram rows per text table")
    word_buckets: int = Field(2**18, ge=1, description="hashed word-unigram rows per text table")
    bigram_buckets: int = Field(2**18, ge=1, description="hashed word-bigram rows per text table")
    word_ngrams: bool = Field(True, description="add hashed word unigrams and bigrams to the trigrams")
    max_text_chars: int = Field(256, ge=1, description="the query and the title are cut to this many characters")
    max_body_chars: int = Field(
        2048, ge=1, description="the document body is cut to this many characters (SciFact abstracts: median "
        "1,330; 256 kept a fifth of them)",
    )
    doc_body: bool = Field(True, description="embed the document body besides its title")
    context_buckets: int = Field(2**17, ge=2, description="hashed rows of the categorical table per tower")
    use_context: bool = Field(
        True, description="False gives the text-only model: same towers without any context input"
    )
    location: bool = Field(True, description="searcher city/region/country/language; doc location + member cities")
    social: bool = Field(True, description="searcher social clusters; document member clusters")
    counts: bool = Field(True, description="friend count; member and active-member counts (log1p)")
    doc_type: bool = Field(True, description="the document type as a categorical feature")
    ids: bool = Field(
        True, description="hashed id embeddings: the searcher id (query tower) and the document id (document "
        "tower), for ids seen at least id_min_count times in training; rarer and unseen ids use the unknown row",
    )
    history: bool = Field(
        True, description="the searcher's recent clicks and joins as a weighted multi-hot of document ids "
        "(features.history; same id vocabulary as the document id)",
    )
    profile: bool = Field(True, description="the searcher's attribute tokens (age group, gender, occupation)")
    tags: bool = Field(True, description="the document's own labels (topics; an event's group): what links a "
                       "new document to known ones")
    id_min_count: int = Field(2, ge=1, description="training examples a document id, training sessions a "
                              "searcher id needs to get its own embedding")
    scale_counts: bool = Field(
        True, description="standardize the log1p count features with training statistics (unscaled counts "
        "up to ~7 dominate the MLP input)",
    )
    pretrained_text: Literal["all-MiniLM-L6-v2"] | None = Field(
        None, description="a frozen pretrained sentence encoder (models.pretrained) as a text sub-model: its "
        "unit vectors of the query and of the document's title + body are concatenated to the towers' own "
        "embedding with the fixed weight pretrained_weight (the cosine becomes a weighted sum of both cosines); needs the "
        "'pretrained' extra, costs ~8 ms per online query on one CPU core",
    )
    pretrained_weight: float = Field(
        4.0, gt=0.0, le=100.0, description="weight w of the pretrained part in the concatenation, fixed: the "
        "cosine is (cos_own + w^2 cos_pretrained) / (1 + w^2)",
    )
    hidden_dims: tuple[int, ...] = Field((256,), description="MLP hidden layers of each tower")
    output_dim: int = Field(64, ge=2, description="size of the L2-normalized embedding")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    share_text_tables: bool = Field(
        False, description="query and document towers use the same text embedding tables"
    )

    @classmethod
    def from_saved(cls, saved: dict) -> "ModelConfig":
        """A config read back from a saved model: inputs added after the model was trained are off, so a
        model registered before them loads as it was trained (same towers, same text limits)."""
        added_since_v1 = {"ids": False, "history": False, "profile": False, "tags": False, "scale_counts": False,
                          "max_body_chars": saved.get("max_text_chars", 256)}
        return cls.model_validate({**added_since_v1, **saved})

    @property
    def text_rows(self) -> int:
        """Rows of one text table: slot 0 is the reserved unknown slot, then the three hashed ranges."""
        rows = 1 + self.trigram_buckets
        if self.word_ngrams:
            rows += self.word_buckets + self.bigram_buckets
        return rows


class LossConfig(BaseModel):
    """The training objective: loss, where negatives come from, and how they are corrected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["triplet", "softmax"] = Field(
        "softmax", description="triplet: the paper's margin loss on cosine distance; softmax: sampled softmax"
    )
    margin: float = Field(0.2, ge=0.0, le=2.0, description="triplet margin m on D = 1 - cos")
    temperature: float = Field(0.05, gt=0.0, le=10.0, description="softmax logits are cos / temperature")
    negatives: Literal["batch", "mixed"] = Field(
        "mixed", description="batch: the other positives of the batch; mixed: plus uniform corpus samples"
    )
    n_corpus_negatives: int = Field(
        256, ge=0, description="B': documents drawn uniformly from the whole corpus per step (mixed)"
    )
    logq_correction: bool = Field(
        True, description="subtract log of each negative's sampling probability from softmax logits"
    )
    online_hard_negatives: int = Field(
        2, ge=0,
        description="triplet: per query, keep the n shared negatives (other batch positives, plus corpus "
        "samples when mixed) with the highest cosine; 0 keeps all. Softmax already weighs negatives by "
        "hardness and ignores it",
    )
    extra_negatives: tuple[str, ...] = Field(
        (), description="example list columns of extra negative doc_ids fed to the loss, e.g. hard_negatives"
    )
    max_extra_negatives: int = Field(4, ge=1, description="extra negatives used per example and step")
    easy_hard_ratio: float | None = Field(
        None, gt=0.0, le=10_000.0,
        description="easy:hard mix (the paper saturates at 100:1): per example and step, the extra negatives "
        "used average (batch - 1 + corpus negatives) / ratio, overriding max_extra_negatives; None: "
        "max_extra_negatives each",
    )
    reduction: Literal["mean", "sum"] = Field(
        "mean", description="sum is the paper's eq. 2; mean keeps the step size independent of the batch"
    )

    @field_validator("extra_negatives")
    @classmethod
    def _known_columns(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        allowed = ("random_negatives", "impressed_negatives", "hard_negatives")
        bad = [c for c in v if c not in allowed]
        if bad:
            raise ValueError(f"extra_negatives {bad} not allowed; allowed columns: {list(allowed)}")
        return v


class TrainConfig(BaseModel):
    """One training run: model, objective, optimization, validation and checkpoints."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    positive_features: Literal["corpus", "example"] = Field(
        "corpus", description="corpus: positives are embedded from the document table like the sampled "
        "negatives and the index (one feature distribution); example: from the example's point-in-time "
        "doc_* columns (see models.batches)",
    )
    train_window_days: float | None = Field(
        None, gt=0.0, description="train on the examples of the newest N days of the training split only (None: "
        "all of them): where tastes drift (MovieLens), recent clicks predict the next ones better than a long "
        "history does; the vocabulary and count statistics are fitted on the window too",
    )
    lr: float = Field(2e-3, gt=0.0, description="Adam learning rate of the dense (MLP) parameters")
    sparse_lr: float = Field(1e-2, gt=0.0, description="SparseAdam learning rate of the embedding tables")
    batch_size: int = Field(512, ge=2)
    epochs: int = Field(5, ge=1)
    early_stopping_patience: int = Field(2, ge=1, description="epochs without a better validation metric")
    early_stopping_metric: str = Field("recall@10", description="validation metric that picks the best epoch")
    eval_ks: tuple[int, ...] = Field((1, 10, 50, 100), description="K of recall@K")
    valid_max_sessions: int = Field(10_000, ge=1, description="held-out sessions used per validation")
    checkpoint_every_steps: int = Field(0, ge=0, description="also checkpoint every N steps (0: per epoch only)")
    resumable: bool = Field(
        True, description="write the resumable checkpoint (model, both optimizers' states, RNG) after every "
        "epoch and model.pt at every better epoch, so that a killed run resumes; False for runs that are "
        "thrown away rather than resumed (a benchmark's settings and folds): no checkpoint, the best model "
        "is held in memory and model.pt written once, at the end (the same model, without the per-epoch "
        "writes)",
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available, else cpu")
    progress: bool = Field(True, description="show a tqdm progress bar")
    num_threads: int | None = Field(
        None, ge=1, description="torch CPU threads during training (None: torch's default); 1 avoids "
        "OpenMP spin-waiting on a machine busy with other work",
    )

    @model_validator(mode="after")
    def _metric_is_produced(self) -> "TrainConfig":
        allowed = [f"recall@{k}" for k in self.eval_ks] + ["mrr", "ndcg@10"]
        if self.early_stopping_metric not in allowed:
            raise ValueError(
                f"early_stopping_metric {self.early_stopping_metric!r} is not computed; allowed: {allowed}"
            )
        if self.checkpoint_every_steps and not self.resumable:
            raise ValueError("checkpoint_every_steps needs resumable=True (a run without checkpoints)")
        if not self.eval_ks or min(self.eval_ks) < 1:
            raise ValueError(f"eval_ks must be positive integers, got {self.eval_ks}")
        return self


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; 'cuda' without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no GPU is visible; use device='auto' or 'cpu'")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be one of 'auto', 'cpu', 'cuda'; got {device!r}")
    return device
