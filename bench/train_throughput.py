"""Training throughput: our training loop vs a plain PyTorch loop with the same towers, batch and loss.

Both sides use the same featurized data (``TrainingData``), model config, objective and optimizers
(SparseAdam for the tables, Adam for the MLPs; PyTorch's SparseAdam in the plain loop, the same updates
by row in ``train``: the plain loop also runs with that one); the plain loop has no checkpoints, progress
bar, callbacks or bookkeeping, and saves its model once at the end. ``train()`` runs without validation; its
figure is the loop's own timer (steps incl. batch assembly, progress bar and periodic checkpoints), and the
wall time of the whole call (featurization, the model file and the per-epoch resumable checkpoint with both
optimizers' states) is reported beside it. Runs alternate to share machine noise.

The checkpoint costs a fixed few seconds per epoch (the default model: 50M parameters, ~0.6 GB with the
optimizers' states), so the whole-call ratio depends on the epoch's length; the weekly training of the 1M
world runs ~1M examples per epoch. Measure at that scale:

    python bench/train_throughput.py --examples 400000 --epochs 2 --repeats 1 --threads 1
    python bench/train_throughput.py --examples 40000 --epochs 1 --threads 1   # short epochs: checkpoint-bound

The plain loop also runs with PyTorch's own sparse embedding-bag gradient (one row per lookup) instead of
the towers' compact one (one row per distinct id, ``models.compact_bags``). ``--workload scifact`` trains on
SciFact's training claims and its 5,183 abstracts with the quality benchmark's SciFact recipe (batch 64,
bodies up to 2,048 characters: long texts, many repeated n-grams per batch), where the difference is largest:

    python bench/train_throughput.py --workload scifact --epochs 3 --threads 1 --out bench/results/train_throughput_scifact.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # allow running as a script from a checkout
    sys.path.insert(0, str(ROOT))

from bench.toy import location_task  # noqa: E402
from models.batches import TrainingData  # noqa: E402
from models.compact_bags import CompactEmbeddingBag  # noqa: E402
from models.config import LossConfig, ModelConfig, TrainConfig  # noqa: E402
from models.objective import RetrievalObjective  # noqa: E402
from models.sparse_adam import RowSparseAdam  # noqa: E402
from models.towers import TwoTowerModel  # noqa: E402
from models.train import train  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "train_throughput.md"


SAMPLED_STEPS = 5  # steps whose text-table lookups are counted


def plain_loop(examples, documents, cfg: TrainConfig, epochs: int, compact: bool = True,
               lookups: list | None = None, sparse_optimizer=torch.optim.SparseAdam) -> tuple[float, float]:
    """Examples/s of the bare loop (gather batch, forward, loss, backward, two optimizer steps), and
    of the whole call including featurization. ``compact=False``: PyTorch's per-lookup sparse gradient.
    ``lookups`` receives (lookups, distinct rows) of the text tables in each of the first steps.
    ``sparse_optimizer``: the tables' optimizer (PyTorch's SparseAdam; ``train`` uses
    ``models.sparse_adam.RowSparseAdam``, the same updates)."""
    t_wall = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = TwoTowerModel(cfg.model)
    for m in model.modules():
        if isinstance(m, CompactEmbeddingBag):
            m.compact_gradient = compact
    data = TrainingData(model, examples, documents, cfg.loss)
    objective = RetrievalObjective(model, cfg.loss)
    opt_s = sparse_optimizer(model.sparse_parameters(), lr=cfg.sparse_lr)
    opt_d = torch.optim.Adam(model.dense_parameters(), lr=cfg.lr)
    n, bs, seen = len(examples), cfg.batch_size, 0
    tables = {id(t): t for t in (model.query_tower.text, model.doc_tower.text)}  # one if the towers share it
    step_ids: dict[int, list[torch.Tensor]] = {k: [] for k in tables}
    hooks = [] if lookups is None else [
        t.register_forward_pre_hook(lambda m, args: step_ids[id(m)].append(args[0])) for t in tables.values()]
    t0 = time.perf_counter()
    for epoch in range(epochs):
        perm = np.random.default_rng([cfg.seed, epoch]).permutation(n)
        for step in range(0, n, bs):
            rows = perm[step : step + bs]
            if len(rows) < 2:
                continue
            loss = objective(data.batch(rows, np.random.default_rng([cfg.seed, epoch, step])))
            opt_s.zero_grad(set_to_none=True)
            opt_d.zero_grad(set_to_none=True)
            loss.backward()
            opt_s.step()
            opt_d.step()
            seen += len(rows)
            if hooks:  # inside the timed loop, but only for its first few steps
                per_table = [torch.cat(ids) for ids in step_ids.values()]
                lookups.append((sum(len(i) for i in per_table), sum(len(torch.unique(i)) for i in per_table)))
                for ids in step_ids.values():
                    ids.clear()
                if len(lookups) >= SAMPLED_STEPS:
                    for h in hooks:
                        h.remove()
                    hooks = []
    end = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:  # a loop delivers its model: one save at the end
        torch.save(model.state_dict(), Path(d) / "model.pt")
    return seen / (end - t0), seen / (time.perf_counter() - t_wall)


def ours(examples, documents, cfg: TrainConfig) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        r = train(examples, None, documents, cfg, d)
        wall = time.perf_counter() - t0
    return r.examples_per_s, sum(h["examples"] for h in r.history) / wall


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)


def workload(args) -> tuple[pd.DataFrame, pd.DataFrame, TrainConfig, str]:
    """(training examples, documents, config, description) of the chosen workload."""
    if args.workload == "scifact":
        from bench.common import prepare_source
        from bench.retrieval_quality import base_config
        from ingest.datasets import load_source

        prep = prepare_source("scifact", load_source("scifact"))
        examples = prep.parts["train"]
        recipe = argparse.Namespace(epochs=args.epochs, threads=args.threads, no_progress=False)
        cfg = base_config(recipe, len(examples)).model_copy(
            update={"epochs": args.epochs, "checkpoint_every_steps": 0, "resumable": True})
        return examples, prep.corpus, cfg, (
            f"SciFact training claims: {len(examples):,} examples, {len(prep.corpus):,} abstracts "
            f"(bodies up to {cfg.model.max_body_chars:,} characters), the quality benchmark's recipe")
    examples, documents = location_task(args.names, args.cities, args.examples, seed=0)
    cfg = TrainConfig(
        model=ModelConfig(), loss=LossConfig(kind=args.loss, negatives="mixed", n_corpus_negatives=256),
        batch_size=args.batch_size, epochs=args.epochs, progress=True, num_threads=args.threads,
        checkpoint_every_steps=0,
    )
    return examples, documents, cfg, f"Synthetic location task: {len(examples):,} examples, {len(documents):,} documents"


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=("location", "scifact"), default="location")
    ap.add_argument("--examples", type=int, default=40_000, help="location task only")
    ap.add_argument("--names", type=int, default=200, help="location task only")
    ap.add_argument("--cities", type=int, default=100, help="location task only")
    ap.add_argument("--batch-size", type=int, default=1024, help="location task only")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--loss", choices=("softmax", "triplet"), default="softmax", help="location task only")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    examples, documents, cfg, what = workload(args)
    plain_runs, plain_wall_runs, lookup_runs, loop_runs, wall_runs, row_runs = [], [], [], [], [], []
    lookups: list[tuple[int, int]] = []
    for repeat in range(args.repeats):  # alternating, so that the four share the machine's noise
        rate, wall_rate = plain_loop(examples, documents, cfg, args.epochs, lookups=lookups if repeat == 0 else None)
        plain_runs.append(rate)
        plain_wall_runs.append(wall_rate)
        lookup_runs.append(plain_loop(examples, documents, cfg, args.epochs, compact=False)[0])
        row_runs.append(plain_loop(examples, documents, cfg, args.epochs, sparse_optimizer=RowSparseAdam)[0])
        loop, wall = ours(examples, documents, cfg)
        loop_runs.append(loop)
        wall_runs.append(wall)
    p, pw, lk, o, w, rw = (max(plain_runs), max(plain_wall_runs), max(lookup_runs), max(loop_runs), max(wall_runs),
                           max(row_runs))
    m = cfg.model
    table = "\n".join([
        "# Training throughput",
        "",
        f"{what}; batch {cfg.batch_size}, {cfg.loss.kind} loss, mixed negatives B'={cfg.loss.n_corpus_negatives}; "
        f"tables {m.trigram_buckets:,}/{m.word_buckets:,}/{m.bigram_buckets:,} text rows and "
        f"{m.context_buckets:,} context rows x {m.embedding_dim}, MLP {m.hidden_dims} -> {m.output_dim}; "
        f"{args.epochs} epochs, best of {args.repeats}.",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}.",
        "",
        "| measured | plain PyTorch loop | models.train.train | ratio |",
        "|---|---:|---:|---:|",
        f"| training steps (examples/s) | {p:,.0f} | {o:,.0f} | {o / p:.2f}x |",
        f"| whole call incl. featurization (+ per-epoch checkpoints for train) | {pw:,.0f} | {w:,.0f} | {w / pw:.2f}x |",
        "",
        "Embedding-table gradients, the plain loop's training steps (examples/s): compact (one row per distinct "
        f"id, `models.compact_bags`, what the towers use) {p:,.0f}; PyTorch's per-lookup sparse gradient "
        f"{lk:,.0f}; compact / per-lookup {p / lk:.2f}x. A step looks up {np.mean([a for a, _ in lookups]):,.0f} "
        f"rows of the text tables (both towers; mean of its first {len(lookups)} steps), "
        f"{np.mean([b for _, b in lookups]):,.0f} of them distinct (per table).",
        "",
        "The tables' optimizer, the plain loop's training steps (examples/s): `torch.optim.SparseAdam` "
        f"{p:,.0f}; `models.sparse_adam.RowSparseAdam` (the same updates bit for bit, rows read and written "
        f"by index, what `train` uses) {rw:,.0f}; ratio {rw / p:.2f}x.",
        "",
        f"Runs (examples/s): plain steps {[round(x) for x in plain_runs]}, whole {[round(x) for x in plain_wall_runs]}; "
        f"plain steps with per-lookup gradients {[round(x) for x in lookup_runs]}; "
        f"plain steps with RowSparseAdam {[round(x) for x in row_runs]}; "
        f"train steps {[round(x) for x in loop_runs]}, whole {[round(x) for x in wall_runs]}. The gap in the "
        "whole-call row is the per-epoch checkpoint (model, both optimizers' states, written atomically); the "
        "plain loop's whole call includes one save of its model.",
        "",
        "Reproduce: `python bench/train_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
        "",
    ])
    print(table)
    write_atomic(args.out, table)
    return table


if __name__ == "__main__":
    main()
