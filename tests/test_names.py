"""Names that become paths are checked where they enter, and an atomic replace never deletes a directory
that is not one of ours (a name such as ../../somewhere used to write outside EBR_HOME and delete it)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from infra.atomic import NotOursError, atomic_directory
from infra.names import InvalidNameError, check_name
from infra.run_dirs import runs_root
from infra.settings import get_settings

BAD = ["../../somewhere", "/tmp/x", "..", ".hidden", "a/b", "", "x" * 200, "a b"]


@pytest.mark.parametrize("name", BAD)
def test_unsafe_names_are_refused_everywhere_they_become_paths(name, home):
    from features.store import FeatureRepo

    with pytest.raises(InvalidNameError, match="invalid dataset name"):
        get_settings().dataset_path(name)
    with pytest.raises(InvalidNameError):
        FeatureRepo.for_dataset(name)
    with pytest.raises(InvalidNameError):
        runs_root("train", name)
    assert check_name("synthetic-default") == "synthetic-default"


def test_ebr_generate_refuses_a_name_outside_its_home_and_writes_nothing(home, tmp_path):
    from cli.main import app

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    rel = "../" * 8 + str(victim).lstrip("/")
    result = CliRunner().invoke(app, ["generate", "--preset", "tiny", "--name", rel])
    assert result.exit_code == 2 and "invalid dataset name" in result.output
    assert (victim / "precious.txt").read_text() == "keep me"


def test_ebr_generate_refuses_an_empty_name_and_another_world_under_an_existing_name(home):
    from cli.main import app
    from ingest.contract import read_manifest

    runner = CliRunner()
    result = runner.invoke(app, ["generate", "--preset", "tiny", "--name", ""])
    assert result.exit_code == 2 and "invalid dataset name" in result.output
    assert not get_settings().dataset_path("synthetic-tiny").exists()  # not the default name instead
    assert runner.invoke(app, ["generate", "--preset", "tiny", "--name", "w"]).exit_code == 0
    assert runner.invoke(app, ["generate", "--preset", "tiny", "--name", "w"]).exit_code == 0  # the same world
    other = runner.invoke(app, ["generate", "--preset", "tiny", "--name", "w", "--seed", "1"])
    assert other.exit_code == 2 and "already exists" in other.output and "--force" in other.output
    assert read_manifest(get_settings().dataset_path("w")).params["seed"] == 0  # untouched
    assert runner.invoke(app, ["generate", "--preset", "tiny", "--name", "w", "--seed", "1", "--force"]).exit_code == 0
    assert read_manifest(get_settings().dataset_path("w")).params["seed"] == 1


def test_an_atomic_replace_never_deletes_a_directory_that_is_not_ours(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("someone else's")
    with pytest.raises(NotOursError, match="holds no manifest.json"):
        with atomic_directory(foreign, marker="manifest.json") as tmp:
            (tmp / "manifest.json").write_text("{}")
    assert (foreign / "notes.txt").read_text() == "someone else's"
    assert [p.name for p in tmp_path.iterdir()] == ["foreign"]  # no temporary directory left behind
    # ours (holds the marker) or empty: replaced
    for target in (tmp_path / "ours", tmp_path / "empty"):
        target.mkdir()
    (tmp_path / "ours" / "manifest.json").write_text("{}")
    for target in (tmp_path / "ours", tmp_path / "empty"):
        with atomic_directory(target, marker="manifest.json") as tmp:
            (tmp / "manifest.json").write_text('{"new": 1}')
        assert (target / "manifest.json").read_text() == '{"new": 1}'


def test_saving_an_index_never_replaces_a_directory_that_is_not_ours(tmp_path):
    """The Python API too: EmbeddingIndex.save and stage_index refuse a foreign non-empty directory, and
    replace their own."""
    import numpy as np
    import pandas as pd

    from ann.index import EmbeddingIndex, IndexConfig
    from serving.index_store import doc_map_frame, stage_index

    vectors = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    index = EmbeddingIndex.build(vectors, np.arange(20), IndexConfig(kind="flat"), progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("someone else's")
    doc_map = doc_map_frame(pd.DataFrame({"doc_id": [f"d{i}" for i in range(20)], "title": "t", "doc_type": "group"}))
    with pytest.raises(NotOursError):
        index.save(foreign)
    with pytest.raises(NotOursError):
        stage_index(index, doc_map, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    index.save(tmp_path / "mine")
    index.save(tmp_path / "mine")  # its own: replaced
    stage_index(index, doc_map, tmp_path / "staged")
    stage_index(index, doc_map, tmp_path / "staged")
    assert EmbeddingIndex.load(tmp_path / "mine").ntotal == 20
