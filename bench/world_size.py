"""Generation time and on-disk size of a synthetic world preset.

    python -m bench.world_size --preset default
    python -m bench.world_size --preset 1m

Generates the preset, writes it with ``write_dataset`` to a temporary directory, prints a table (rows per
table, parquet size) and records one summary row per preset in ``bench/results/world_size.md`` (a rerun
replaces that preset's row).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from ingest.contract import write_dataset
from ingest.synthetic import PRESETS, WorldConfig, generate_world

RESULTS = Path(__file__).resolve().parent / "results" / "world_size.md"
HEADER = (
    "| preset | seed | searchers | documents | friendships | memberships | sessions | generate s (wall) "
    "| generate s (CPU) | write s | size MB | peak RSS GB | measured |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def _mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def measure(preset: str, seed: int) -> dict:
    cfg = WorldConfig.preset(preset, seed=seed)
    t0, c0 = time.perf_counter(), time.process_time()
    world = generate_world(cfg)
    t_gen, c_gen = time.perf_counter() - t0, time.process_time() - c0
    with tempfile.TemporaryDirectory(prefix="world-size-") as tmp:
        target = Path(tmp) / preset
        t0 = time.perf_counter()
        write_dataset(world, target)
        t_write = time.perf_counter() - t0
        per_table = {p.stem: p.stat().st_size / 1e6 for p in target.glob("*.parquet")}
        size = _mb(target)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # ru_maxrss is KiB on Linux
    return {
        "preset": preset, "seed": seed, "rows": world.row_counts(), "generate_s": t_gen, "generate_cpu_s": c_gen, "write_s": t_write,
        "size_mb": size, "per_table_mb": per_table, "peak_gb": peak_gb,
    }


def _row(m: dict) -> str:
    r = m["rows"]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return (
        f"| {m['preset']} | {m['seed']} | {r['searchers']:,} | {r['documents']:,} | {r['friendships']:,} "
        f"| {r['memberships']:,} | {r['sessions']:,} | {m['generate_s']:.1f} | {m['generate_cpu_s']:.1f} "
        f"| {m['write_s']:.1f} "
        f"| {m['size_mb']:.1f} | {m['peak_gb']:.2f} | {when} |\n"
    )


def record(m: dict, path: Path = RESULTS) -> None:
    """Replace (or add) this preset's row, atomically."""
    rows: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines(keepends=True):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("| ") and cells and cells[0] in PRESETS:
                rows[cells[0]] = line
    rows[m["preset"]] = _row(m)
    order = [p for p in PRESETS if p in rows]
    text = (
        "# Synthetic world: generation time and size\n\n"
        "`python -m bench.world_size --preset <name>`: generate, then `write_dataset` (validation + parquet) "
        f"to a temporary directory. Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}. Wall time depends on what else runs on the machine; CPU time "
        "(user + system of the generating process) is the steadier figure.\n\n" + HEADER + "".join(rows[p] for p in order)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default", choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-record", action="store_true", help="print only; do not update the results file")
    args = ap.parse_args(argv)
    m = measure(args.preset, args.seed)
    print(f"\npreset {m['preset']} (seed {m['seed']}): generate {m['generate_s']:.1f} s "
          f"({m['generate_cpu_s']:.1f} s CPU), "
          f"write {m['write_s']:.1f} s, {m['size_mb']:.1f} MB on disk, peak RSS {m['peak_gb']:.2f} GB")
    print(f"{'table':<12} {'rows':>12} {'MB':>9}")
    for name, n in m["rows"].items():
        print(f"{name:<12} {n:>12,} {m['per_table_mb'].get(name, 0.0):>9.1f}")
    if not args.no_record:
        record(m)
        print(f"recorded in {RESULTS.relative_to(RESULTS.parent.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
