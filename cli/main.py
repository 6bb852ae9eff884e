"""The ``ebr`` command line: thin wrappers over the typed functions of the other packages.

Heavy imports (torch, feast, prefect) happen inside the commands so that ``ebr --help`` stays fast.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Embedding-based retrieval: data, features, training, index and search.",
)


def _settings():
    from infra.settings import get_settings

    return get_settings()


def _human_size(path: Path) -> str:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    for unit in ("B", "KiB", "MiB", "GiB"):
        if total < 1024 or unit == "GiB":
            return f"{total:.1f} {unit}" if unit != "B" else f"{total} B"
        total /= 1024
    return f"{total:.1f} GiB"


def _print_counts(manifest, path: Path, seconds: float) -> None:
    counts = ", ".join(f"{k}={v:,}" for k, v in manifest.row_counts.items())
    typer.echo(f"wrote {path} ({_human_size(path)}) in {seconds:.1f}s: {counts}")


@app.command()
def generate(
    preset: str = typer.Option("default", help="world size: tiny, default, large or 1m"),
    seed: int = typer.Option(0, help="random seed (same seed, same world)"),
    name: Optional[str] = typer.Option(None, help="dataset name (default: synthetic-<preset>)"),
) -> None:
    """Generate the synthetic social-search world and write it as a canonical dataset."""
    from ingest.contract import write_dataset
    from ingest.synthetic import WorldConfig, generate_world

    try:
        config = WorldConfig.preset(preset).model_copy(update={"seed": seed})
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--preset") from None
    target = _settings().data_dir / (name or f"synthetic-{preset}")
    start = time.perf_counter()
    world = generate_world(config)
    manifest = write_dataset(world, target, source="synthetic", params=config.model_dump(mode="json"))
    _print_counts(manifest, target, time.perf_counter() - start)


@app.command()
def ingest(
    source: str = typer.Argument(..., help="lastfm, meetup_montana, meetup_chicago, movielens or scifact"),
    datasets_dir: Optional[Path] = typer.Option(
        None, help="where the public datasets are (default: EBR_DATASETS_DIR or ../shared/datasets)"
    ),
) -> None:
    """Turn a real public dataset into the canonical tables."""
    from ingest.contract import write_dataset
    from ingest.datasets import ADAPTERS, load_source

    if source not in ADAPTERS:
        raise typer.BadParameter(f"unknown source {source!r}; one of {sorted(ADAPTERS)}")
    start = time.perf_counter()
    try:
        dataset = load_source(source, datasets_dir)
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    target = _settings().data_dir / source
    manifest = write_dataset(dataset, target, source=source)
    _print_counts(manifest, target, time.perf_counter() - start)


@app.command("datasets")
def list_datasets() -> None:
    """List the canonical datasets written so far, with their row counts."""
    from ingest.contract import MANIFEST, DatasetManifest

    root = _settings().data_dir
    found = sorted(p for p in root.glob("*") if (p / MANIFEST).exists()) if root.exists() else []
    if not found:
        typer.echo(f"no datasets under {root}; create one with 'ebr generate' or 'ebr ingest'")
        return
    for p in found:
        m = DatasetManifest.from_json((p / MANIFEST).read_text())
        counts = ", ".join(f"{k}={v:,}" for k, v in m.row_counts.items())
        typer.echo(f"{p.name:24s} {m.source:12s} {m.created_at}  {counts}")


@app.command()
def demo(
    preset: str = typer.Option("default", help="size of the synthetic world"),
    real: str = typer.Option("lastfm", help="a real dataset to ingest too ('' to skip)"),
) -> None:
    """The main job on the embedded default: generate the world and ingest a real dataset."""
    generate(preset=preset, seed=0, name=None)
    if real:
        ingest(source=real, datasets_dir=None)
    typer.echo("next: 'ebr datasets' lists what was written")


if __name__ == "__main__":  # pragma: no cover
    app()
