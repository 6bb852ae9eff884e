"""The feature repository: entities, sources, feature views and versioned feature services.

Declarations only; the tables are computed by ``features.compute`` and written by ``features.store``.
Source paths are relative to the runtime directory of one dataset's store; ``FeatureRepo.apply`` makes
them absolute before registering (Feast would otherwise resolve them against the current directory).

Services and versions: a model records the service it was trained with (``searcher_training_v1`` ...).
Serving services hold the same searcher features as training (no train/serve skew); the document serving
service leaves out title and body, which the index already carries and which are costly to keep online.
A change of feature semantics gets new ``_v2`` services next to the old ones, never an edit of ``_v1``.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Array, Float64, Int64, String, UnixTimestamp

from features.repo import FEATURE_SERVICE_VERSION

SEARCHER_SOURCE_DIR = "sources/searcher_features"
DOCUMENT_SOURCE_DIR = "sources/document_features"

# The searcher who types a query (or receives recommendations): the query side of the two towers.
searcher = Entity(
    name="searcher",
    join_keys=["searcher_id"],
    value_type=ValueType.STRING,
    description="a person who searches",
)

# A retrievable document: group, event, person, artist, movie, paper, ...
document = Entity(
    name="document",
    join_keys=["doc_id"],
    value_type=ValueType.STRING,
    description="a document of the index",
)

# One parquet file per daily snapshot (<day>.parquet); the glob reads them all.
searcher_features_source = FileSource(
    name="searcher_features_source",
    path=f"{SEARCHER_SOURCE_DIR}/*.parquet",
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
    description="daily searcher snapshots computed by features.compute",
)

document_features_source = FileSource(
    name="document_features_source",
    path=f"{DOCUMENT_SOURCE_DIR}/*.parquet",
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
    description="daily document snapshots computed by features.compute",
)

# Location and social context of the searcher. A week of TTL: after a week without a nightly run the
# features count as missing rather than silently stale.
searcher_features = FeatureView(
    name="searcher_features",
    entities=[searcher],
    ttl=timedelta(days=7),
    schema=[
        Field(name="city", dtype=String, description="home city ('' when unknown)"),
        Field(name="region", dtype=String, description="admin region of the home city"),
        Field(name="country", dtype=String, description="ISO 3166 alpha-2"),
        Field(name="language", dtype=String, description="ISO 639-1"),
        Field(name="clusters", dtype=Array(String), description="top social clusters (own + friends')"),
        Field(name="clusters_weights", dtype=Array(Float64), description="weights of clusters, sum 1"),
        Field(name="friend_count", dtype=Int64, description="distinct friends as of the snapshot"),
        Field(name="feature_ts", dtype=UnixTimestamp, description="as-of time of the snapshot"),
    ],
    online=True,
    source=searcher_features_source,
    description="searcher location and social clusters, one daily snapshot as of the end of each day",
    tags={"team": "search", "entity": "searcher", "paper": "EBR location + social features"},
)

# The searcher's recent clicks and joins (features.history), from the same daily snapshots. A view of its
# own so that the v1 services keep exactly the features they always had.
searcher_history = FeatureView(
    name="searcher_history",
    entities=[searcher],
    ttl=timedelta(days=7),
    schema=[
        Field(name="history", dtype=Array(String), description="most recent distinct documents clicked or joined"),
        Field(name="history_weights", dtype=Array(Float64), description="recency weights of history, sum 1"),
    ],
    online=True,
    source=searcher_features_source,
    description="documents the searcher clicked or joined before the snapshot, weighted by recency",
    tags={"team": "search", "entity": "searcher", "paper": "EBR multi-hot id features with weights"},
)

# The searcher's own attributes (age group, gender, occupation where the source has them), as tokens.
searcher_profile = FeatureView(
    name="searcher_profile",
    entities=[searcher],
    ttl=timedelta(days=7),
    schema=[
        Field(name="profile", dtype=Array(String), description="attribute tokens, e.g. age:25-34, gender:F"),
        Field(name="profile_weights", dtype=Array(Float64), description="uniform weights, sum 1"),
    ],
    online=True,
    source=searcher_features_source,
    description="what is known of a searcher before any history (cold start)",
    tags={"team": "search", "entity": "searcher"},
)

# The document's own fields plus aggregates over its members (the paper's group features).
document_features = FeatureView(
    name="document_features",
    entities=[document],
    ttl=timedelta(days=7),
    schema=[
        Field(name="title", dtype=String),
        Field(name="body", dtype=String),
        Field(name="doc_type", dtype=String, description="group, event, person, artist, ..."),
        Field(name="city", dtype=String, description="admin-tagged city ('' when untagged)"),
        Field(name="region", dtype=String),
        Field(name="country", dtype=String),
        Field(name="member_cities", dtype=Array(String), description="top home cities of members"),
        Field(name="member_cities_weights", dtype=Array(Float64)),
        Field(name="member_clusters", dtype=Array(String), description="top social clusters of members"),
        Field(name="member_clusters_weights", dtype=Array(Float64)),
        Field(name="member_count", dtype=Int64),
        Field(name="active_members_30d", dtype=Int64, description="members active in the last 30 days"),
        Field(name="last_active_at", dtype=UnixTimestamp),
        Field(name="feature_ts", dtype=UnixTimestamp, description="as-of time of the snapshot"),
    ],
    online=True,
    source=document_features_source,
    description="document text, admin location and member aggregates, one daily snapshot per day",
    tags={"team": "search", "entity": "document", "paper": "EBR group aggregates"},
)

# The source's own labels of a document (topics, an event's group), for v2 models.
document_tags = FeatureView(
    name="document_tags",
    entities=[document],
    ttl=timedelta(days=7),
    schema=[
        Field(name="tags", dtype=Array(String), description="the source's labels of the document"),
        Field(name="tags_weights", dtype=Array(Float64), description="uniform weights, sum 1"),
    ],
    online=True,
    source=document_features_source,
    description="labels that link a new document to known ones (Meetup topics, the group of an event)",
    tags={"team": "search", "entity": "document"},
)

# Versioned contracts: what training asked for is what serving returns.
searcher_training_v1 = FeatureService(
    name="searcher_training_v1",
    features=[searcher_features],
    description="searcher features of training examples (point-in-time join)",
    tags={"version": FEATURE_SERVICE_VERSION, "use": "training"},
)

searcher_serving_v1 = FeatureService(
    name="searcher_serving_v1",
    features=[searcher_features],
    description="searcher features read online at query time; same features as searcher_training_v1",
    tags={"version": FEATURE_SERVICE_VERSION, "use": "serving"},
)

document_training_v1 = FeatureService(
    name="document_training_v1",
    features=[document_features],
    description="document features of training examples and of batch document embedding",
    tags={"version": FEATURE_SERVICE_VERSION, "use": "training"},
)

document_serving_v1 = FeatureService(
    name="document_serving_v1",
    features=[
        document_features[[
            "doc_type", "city", "region", "country",
            "member_cities", "member_cities_weights", "member_clusters", "member_clusters_weights",
            "member_count", "active_members_30d", "last_active_at", "feature_ts",
        ]]
    ],
    description="document features read online (index selection, reranking); no title/body",
    tags={"version": FEATURE_SERVICE_VERSION, "use": "serving"},
)

# v2: the unified model with id and history features (models.config.ModelConfig.ids / .history).
searcher_training_v2 = FeatureService(
    name="searcher_training_v2",
    features=[searcher_features, searcher_history, searcher_profile],
    description="v1 searcher features plus the searcher's history (clicked and joined documents) and profile",
    tags={"version": "v2", "use": "training"},
)

searcher_serving_v2 = FeatureService(
    name="searcher_serving_v2",
    features=[searcher_features, searcher_history, searcher_profile],
    description="searcher features read online at query time; same features as searcher_training_v2",
    tags={"version": "v2", "use": "serving"},
)

document_training_v2 = FeatureService(
    name="document_training_v2",
    features=[document_features, document_tags],
    description="document features of v2 models: v1's plus the document's tags (its id needs no feature)",
    tags={"version": "v2", "use": "training"},
)

document_serving_v2 = FeatureService(
    name="document_serving_v2",
    features=[document_features[[
        "doc_type", "city", "region", "country",
        "member_cities", "member_cities_weights", "member_clusters", "member_clusters_weights",
        "member_count", "active_members_30d", "last_active_at", "feature_ts",
    ]]],
    description="document features read online (index selection, reranking); no title/body",
    tags={"version": "v2", "use": "serving"},
)

ENTITIES = [searcher, document]
SOURCES = [searcher_features_source, document_features_source]
FEATURE_VIEWS = [searcher_features, searcher_history, searcher_profile, document_features, document_tags]
FEATURE_SERVICES = [
    searcher_training_v1, searcher_serving_v1, document_training_v1, document_serving_v1,
    searcher_training_v2, searcher_serving_v2, document_training_v2, document_serving_v2,
]
