"""Bookkeeping of iterative training rounds (offline hard-negative mining): run keys, finished rounds, the best.

A mining run is identified by a key derived from what it starts from and how it runs (dataset, starting
model version, examples version, parameters). Every finished round is a registered model version whose
metadata carries that key and the round number, so a re-run with the same inputs finds the rounds that
already finished (their examples and models are published) and continues with the next one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from infra.storage import ArtifactStore, ArtifactVersion

MODEL_KIND = "model"


def run_key(**parts: Any) -> str:
    """A short stable hash of the run's identity (JSON of the parts, sorted keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


@dataclass
class RoundRecord:
    """One round's outcome (round 0: the starting model)."""

    round: int
    model_ref: str
    valid: dict[str, float]
    test: dict[str, float]
    examples_ref: str | None = None
    mining: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    resumed: bool = False


def finished_round(store: ArtifactStore, model_name: str, key: str, round_no: int,
                   kind: str = MODEL_KIND) -> ArtifactVersion | None:
    """The published version of round ``round_no`` of run ``key``, if there is one: its registered model
    (``kind="model"``) or its mined examples (``kind="dataset"``)."""
    for av in reversed(store.list_versions(kind, model_name)):
        m = av.metadata.get("mining_run") or {}
        if m.get("key") == key and m.get("round") == round_no:
            return av
    return None


def record_of(av: ArtifactVersion) -> RoundRecord:
    m = av.metadata["mining_run"]
    return RoundRecord(round=m["round"], model_ref=av.ref, valid=m["valid"], test=av.metadata.get("metrics", {}),
                       examples_ref=av.metadata.get("examples"), mining=m.get("mining", {}),
                       seconds=m.get("seconds", {}), resumed=True)


def improved(candidate: RoundRecord, best: RoundRecord, metric: str, min_gain: float) -> bool:
    """Whether ``candidate`` beats ``best`` on the validation ``metric`` by more than ``min_gain``."""
    return (candidate.valid.get(metric) or 0.0) > (best.valid.get(metric) or 0.0) + min_gain


def rounds_markdown(title: str, records: list[RoundRecord], metric: str, best: int, stopped: str) -> str:
    ks = ("recall@1", "recall@10", "recall@100")
    lines = [f"# {title}", "", f"Rounds chosen on the validation split ({metric}); test figures are reported, "
             "never used to choose.", "",
             "| round | model | valid " + metric + " | " + " | ".join(f"test {k}" for k in ks)
             + " | mined examples | false negatives removed | mining (s) | training (s) |",
             "|---:|---|---:|" + "---:|" * len(ks) + "---:|---:|---:|---:|"]
    for r in records:
        mark = " **best**" if r.round == best else ""
        fn = r.mining.get("removed_known_positives", 0) + r.mining.get("removed_by_margin", 0)
        lines.append(
            f"| {r.round}{mark} | `{r.model_ref}` | {r.valid.get(metric, float('nan')):.4f} | "
            + " | ".join(f"{r.test.get(k, float('nan')):.4f}" for k in ks)
            + f" | {r.mining.get('examples_with_negatives', '-')} | {fn if r.mining else '-'} | "
            f"{r.seconds.get('mining', 0):.1f} | {r.seconds.get('training', 0):.1f} |"
            + (" (resumed)" if r.resumed else ""))
    lines += ["", f"Stopped: {stopped}."]
    return "\n".join(lines) + "\n"


__all__ = ["RoundRecord", "finished_round", "improved", "record_of", "rounds_markdown", "run_key"]
