"""Typed configuration of the synthetic social world: sizes, time span and every behavioural knob.

Each knob is documented in ``docs/synthetic_world.md``. Presets are named sizes (``tiny`` for tests,
``default`` for the demo, ``large`` and ``1m`` for scale); any field can be overridden on top of a preset:
``WorldConfig.preset("default", seed=7, n_sessions=50_000)``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PresetName = Literal["tiny", "default", "large", "1m"]


class _Knobs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GeoConfig(_Knobs):
    """Where people and documents live: a few countries, their largest cities, population-weighted."""

    countries: tuple[str, ...] = Field(
        default=("US", "DE", "GB", "FR", "ES", "BR", "IT", "MX", "CA", "IN"),
        description="ISO2 countries in preference order; the first n_countries are used",
    )
    n_countries: int = Field(default=6, ge=1, le=50)
    cities_per_country: int = Field(default=25, ge=1, le=2000, description="largest cities kept per country")
    population_exponent: float = Field(
        default=1.0, ge=0.0, le=3.0,
        description="city weight = population ** exponent (0: uniform over cities, >1: more concentrated)",
    )
    jitter_km: float = Field(default=6.0, ge=0.0, le=100.0, description="lat/lon jitter around the city centre")
    empty_city_share: float = Field(
        default=0.03, ge=0.0, le=0.5, description="share of groups without an admin-tagged place (online groups)"
    )
    foreign_name_share: float = Field(
        default=0.15, ge=0.0, le=1.0, description="people whose name comes from another country's name pool"
    )

    @field_validator("countries")
    @classmethod
    def _iso2(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [c for c in v if len(c) != 2 or not c.isalpha() or not c.isupper()]
        if bad or not v:
            raise ValueError(f"countries must be non-empty ISO 3166 alpha-2 codes like 'US', got {bad or v}")
        return v


class SocialConfig(_Knobs):
    """The friendship graph: communities nested inside cities, a stochastic-block-like edge law."""

    community_size: int = Field(default=60, ge=2, le=10_000, description="mean members per community")
    mean_friends: float = Field(default=16.0, ge=0.0, le=500.0, description="mean friends per searcher")
    p_same_community: float = Field(default=0.65, ge=0.0, le=1.0)
    p_same_city: float = Field(default=0.17, ge=0.0, le=1.0)
    p_same_country: float = Field(default=0.12, ge=0.0, le=1.0)
    # the rest (1 - the three above) goes to anyone anywhere
    new_friendship_share: float = Field(
        default=0.08, ge=0.0, le=1.0, description="friendships created inside the time window"
    )

    @model_validator(mode="after")
    def _mix(self) -> "SocialConfig":
        total = self.p_same_community + self.p_same_city + self.p_same_country
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"p_same_community + p_same_city + p_same_country must be <= 1 (the rest is global), got {total:.3f}"
            )
        return self


class MembershipConfig(_Knobs):
    """Group joins and event RSVPs: follow the community, the city and friends."""

    mean_groups: float = Field(default=5.0, ge=0.0, le=200.0, description="mean groups joined per searcher")
    mean_events: float = Field(default=2.0, ge=0.0, le=200.0, description="mean event RSVPs per searcher")
    p_community: float = Field(default=0.35, ge=0.0, le=1.0, description="join a group founded in one's community")
    p_friend: float = Field(default=0.30, ge=0.0, le=1.0, description="join a group a friend joined")
    p_city: float = Field(default=0.25, ge=0.0, le=1.0, description="join a popular group of one's city")
    # the rest: a popular group anywhere
    p_event_hosted: float = Field(
        default=0.6, ge=0.0, le=1.0, description="events hosted by a group (same city, RSVPs from its members)"
    )
    popularity_zipf: float = Field(default=1.1, ge=0.0, le=3.0, description="skew of document popularity")

    @model_validator(mode="after")
    def _mix(self) -> "MembershipConfig":
        total = self.p_community + self.p_friend + self.p_city
        if total > 1.0 + 1e-9:
            raise ValueError(f"p_community + p_friend + p_city must be <= 1 (the rest is global), got {total:.3f}")
        return self


class IntentConfig(_Knobs):
    """What a searcher looks for: a mixture of social, local and global intents (weights, normalized)."""

    friend_person: float = Field(default=0.22, ge=0.0, description="a friend's profile")
    community_person: float = Field(default=0.08, ge=0.0, description="a co-community member's profile")
    member_doc: float = Field(default=0.12, ge=0.0, description="a group/event one belongs to")
    friend_doc: float = Field(default=0.18, ge=0.0, description="a group/event a friend belongs to")
    local_doc: float = Field(default=0.20, ge=0.0, description="a popular document of one's city")
    country_doc: float = Field(default=0.10, ge=0.0, description="a popular document of one's country")
    global_doc: float = Field(default=0.10, ge=0.0, description="a popular document anywhere")
    favorites: int = Field(default=3, ge=1, le=20, description="navigational favourites per searcher")
    p_navigational: float = Field(
        default=0.3, ge=0.0, le=1.0, description="share of sessions that look for one of the favourites again"
    )
    p_habit_query: float = Field(
        default=0.6, ge=0.0, le=1.0, description="a repeated search reuses the first query typed for that target"
    )

    def weights(self) -> dict[str, float]:
        w = {k: getattr(self, k) for k in INTENTS}
        total = sum(w.values())
        if total <= 0:
            raise ValueError(f"at least one intent weight must be positive; intents: {list(INTENTS)}")
        return {k: v / total for k, v in w.items()}


INTENTS = ("friend_person", "community_person", "member_doc", "friend_doc", "local_doc", "country_doc", "global_doc")


class QueryNoiseConfig(_Knobs):
    """How a query is derived from the target's name."""

    p_lowercase: float = Field(default=0.85, ge=0.0, le=1.0)
    p_partial: float = Field(
        default=0.12, ge=0.0, le=1.0, description="first name only / leading words only / prefix of the last word"
    )
    p_drop_optional: float = Field(
        default=0.35, ge=0.0, le=1.0, description="drop optional terms (club, group, the city, NW, ...)"
    )
    p_extra_term: float = Field(default=0.08, ge=0.0, le=1.0, description="add a term (the city, 'group', 'nw', ...)")
    p_misspell: float = Field(default=0.18, ge=0.0, le=1.0, description="one typo (drop/swap/replace/phonetic)")
    p_second_typo: float = Field(default=0.25, ge=0.0, le=1.0, description="given a typo, a second one")
    p_phonetic: float = Field(default=0.4, ge=0.0, le=1.0, description="share of typos that are phonetic rewrites")


class RelevanceConfig(_Knobs):
    """Latent relevance (drives clicks) and the logging engine's ranking (drives impressions)."""

    w_text: float = Field(default=2.0, ge=0.0, description="weight of the query-title token cosine")
    w_location: float = Field(default=1.5, ge=0.0, description="weight of the location match (see loc_*)")
    w_social: float = Field(default=2.0, ge=0.0, description="weight of the social affinity")
    w_popularity: float = Field(default=0.3, ge=0.0, description="weight of log-popularity (normalized to [0,1])")
    w_intent: float = Field(default=4.0, ge=0.0, description="bonus of the document the searcher has in mind")
    loc_city: float = Field(default=1.0, ge=0.0, le=1.0)
    loc_region: float = Field(default=0.5, ge=0.0, le=1.0)
    loc_country: float = Field(default=0.2, ge=0.0, le=1.0)
    click_threshold: float = Field(default=5.0, description="relevance at which an examined result is clicked half the time")
    click_temperature: float = Field(default=0.8, gt=0.0)
    position_bias: float = Field(default=0.5, ge=0.0, le=5.0, description="examination = 1 / (1 + rank) ** position_bias")
    impressions: int = Field(default=10, ge=1, le=100, description="results shown per session")
    candidates_local: int = Field(default=30, ge=1, le=1000, description="text candidates from the searcher's city")
    candidates_global: int = Field(default=30, ge=1, le=1000, description="text candidates anywhere (by static rank)")
    engine_text: float = Field(default=3.0, ge=0.0, description="logging engine: weight of the text match")
    engine_location: float = Field(default=0.8, ge=0.0, description="logging engine: same-city boost")
    engine_social: float = Field(default=0.8, ge=0.0, description="logging engine: friend/member boost")
    engine_noise: float = Field(default=0.5, ge=0.0, description="logging engine: Gumbel noise scale")
    p_reformulate: float = Field(
        default=0.7, ge=0.0, le=1.0, description="a session without a click is followed by a cleaner query"
    )
    reformulate_within_s: tuple[float, float] = Field(default=(8.0, 240.0), description="delay range, seconds")


class WorldConfig(BaseModel):
    """Everything that defines a synthetic world; the same config (and seed) gives identical tables."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="default", description="preset this config came from (informative)")
    seed: int = Field(default=0, ge=0)
    n_searchers: int = Field(default=20_000, ge=10)
    n_documents: int = Field(default=20_000, ge=10)
    doc_type_shares: dict[str, float] = Field(
        default={"person": 0.45, "group": 0.38, "event": 0.17},
        description="shares of person/group/event documents (person documents are searchers' profiles)",
    )
    n_sessions: int = Field(default=120_000, ge=1, description="sessions before reformulations are added")
    start: datetime = Field(default=datetime(2024, 3, 4, tzinfo=timezone.utc))
    weeks: int = Field(default=8, ge=1, le=520)
    new_searcher_share: float = Field(default=0.05, ge=0.0, le=1.0, description="join during the first half of the window")
    new_document_share: float = Field(default=0.06, ge=0.0, le=1.0, description="groups created inside the window")
    session_activity_sigma: float = Field(default=1.0, ge=0.0, le=4.0, description="lognormal spread of activity")
    inactive_group_days: float = Field(
        default=60.0, gt=0.0, description="mean days since last activity of an unpopular group"
    )
    chunk_sessions: int = Field(default=50_000, ge=100, description="sessions simulated per vectorized chunk")
    geo: GeoConfig = GeoConfig()
    social: SocialConfig = SocialConfig()
    membership: MembershipConfig = MembershipConfig()
    intent: IntentConfig = IntentConfig()
    query: QueryNoiseConfig = QueryNoiseConfig()
    relevance: RelevanceConfig = RelevanceConfig()

    @field_validator("start")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("start must be timezone-aware (UTC), e.g. datetime(2024, 3, 4, tzinfo=timezone.utc)")
        return v.astimezone(timezone.utc)

    @field_validator("doc_type_shares")
    @classmethod
    def _shares(cls, v: dict[str, float]) -> dict[str, float]:
        allowed = {"person", "group", "event"}
        if set(v) - allowed or any(x < 0 for x in v.values()) or sum(v.values()) <= 0:
            raise ValueError(f"doc_type_shares: keys must be among {sorted(allowed)} with non-negative shares, got {v}")
        total = sum(v.values())
        return {k: v.get(k, 0.0) / total for k in ("person", "group", "event")}

    @model_validator(mode="after")
    def _sizes(self) -> "WorldConfig":
        n_person = self.doc_counts()["person"]
        if n_person > self.n_searchers:
            raise ValueError(
                f"person documents are searchers' profiles: n_documents * person share = {n_person} "
                f"must be <= n_searchers = {self.n_searchers}"
            )
        return self

    def doc_counts(self) -> dict[str, int]:
        n = {k: int(round(self.n_documents * s)) for k, s in self.doc_type_shares.items()}
        n["group"] += self.n_documents - sum(n.values())  # rounding remainder
        return n

    @property
    def end(self) -> datetime:
        from datetime import timedelta

        return self.start + timedelta(weeks=self.weeks)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "WorldConfig":
        """A named size, with optional field overrides (nested knobs as dicts or models)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; allowed: {sorted(PRESETS)}")
        data: dict[str, Any] = {"name": name, **PRESETS[name]}
        for key, value in overrides.items():
            if isinstance(data.get(key), dict) and isinstance(value, dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return cls(**data)


# Sizes. default: 20k searchers and 20k documents give every city of a 6-country world dozens to thousands
# of people, enough same-name collisions and 120k sessions (~7 per searcher over 8 weeks), while generating
# in seconds on 2 cores.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "n_searchers": 400, "n_documents": 400, "n_sessions": 3_000,
        "geo": {"n_countries": 2, "cities_per_country": 4},
        "social": {"community_size": 20, "mean_friends": 10.0},
        "membership": {"mean_groups": 4.0, "mean_events": 2.0},
    },
    "default": {"n_searchers": 20_000, "n_documents": 20_000, "n_sessions": 120_000},
    "large": {
        "n_searchers": 100_000, "n_documents": 100_000, "n_sessions": 500_000,
        "geo": {"n_countries": 8, "cities_per_country": 60},
    },
    "1m": {
        "n_searchers": 500_000, "n_documents": 1_000_000, "n_sessions": 1_000_000,
        "doc_type_shares": {"person": 0.4, "group": 0.4, "event": 0.2},
        "geo": {"n_countries": 10, "cities_per_country": 150},
        "social": {"mean_friends": 14.0},
        "chunk_sessions": 40_000,
    },
}
