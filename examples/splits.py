"""The time split of examples into train / valid / test, and the cutoffs it implies.

The split is by time so that evaluation sessions are always newer than training sessions; the cutoff of a
held-out split is the newest moment a model evaluated on it could have learned from.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, time, timedelta, timezone

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from features.schema import SPLITS


class SplitConfig(BaseModel):
    """Time split: the newest sessions are held out. Cut dates win over fractions when given."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    test_fraction: float = Field(0.1, ge=0, lt=1, description="share of sessions (the newest) for test")
    valid_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of the training sessions (the newest) for validation"
    )
    test_start: datetime | None = Field(None, description="sessions at or after this time are test")
    valid_start: datetime | None = Field(None, description="training sessions at or after this are valid")
    use_source_split: bool = Field(
        True, description="when sessions carry a source split, keep it (valid is carved out of train by time)"
    )

    @field_validator("test_start", "valid_start")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return v
        return v.replace(tzinfo=timezone.utc) if v.tzinfo is None else v.astimezone(timezone.utc)

    @model_validator(mode="after")
    def _ordered(self) -> "SplitConfig":
        if self.test_start and self.valid_start and self.valid_start >= self.test_start:
            raise ValueError(
                f"valid_start ({self.valid_start}) must be before test_start ({self.test_start})"
            )
        return self


def end_of_day(day: date | datetime) -> pd.Timestamp:
    """The first instant after ``day`` (UTC): the exclusive upper bound of a run over data up to ``day``."""
    if isinstance(day, datetime):
        ts = pd.Timestamp(day)
        return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return pd.Timestamp(datetime.combine(day, time.min, tzinfo=timezone.utc) + timedelta(days=1))


def sessions_until(sessions: pd.DataFrame, end: date | datetime | None) -> pd.DataFrame:
    """Sessions up to and including the day ``end`` (all of them when ``end`` is None)."""
    if end is None:
        return sessions
    return sessions[sessions["ts"] < end_of_day(end)].reset_index(drop=True)


def recent_examples(examples: pd.DataFrame, days: float | None) -> pd.DataFrame:
    """The examples (or click rows) of the newest ``days`` days, measured back from the newest ``ts``; all of
    them when ``days`` is None."""
    if days is None:
        return examples
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    if "ts" not in examples.columns:
        raise ValueError(f"a window of {days} days needs a 'ts' column; present: {list(examples.columns)}")
    ts = pd.to_datetime(examples["ts"], utc=True)
    return examples[(ts > ts.max() - pd.Timedelta(days=days)).to_numpy()].reset_index(drop=True)


def _newest(ts: pd.Series, fraction: float, start: datetime | None) -> pd.Series:
    """Mask of the newest rows: those at or after ``start``, or the newest ``fraction`` of them.

    A cut is a timestamp, so rows sharing the boundary time land on the same side and every held-out
    row is at least as new as every kept one.
    """
    if start is not None:
        return ts >= pd.Timestamp(start)
    if fraction <= 0 or ts.empty:
        return pd.Series(False, index=ts.index)
    n = max(1, int(round(fraction * len(ts))))
    cut = ts.sort_values(kind="stable").iloc[len(ts) - n]
    return ts >= cut


def split_sessions(sessions: pd.DataFrame, config: SplitConfig | None = None) -> pd.Series:
    """train / valid / test for every session (aligned with ``sessions.index``)."""
    config = config or SplitConfig()
    ts = sessions["ts"]
    out = pd.Series("train", index=sessions.index, dtype=object)
    source = sessions["split"] if "split" in sessions.columns else None
    if config.use_source_split and source is not None and source.notna().any():
        src = source.fillna("train").astype(str)
        bad = ~src.isin(SPLITS)
        if bad.any():
            raise ValueError(
                f"sessions.split has value {src[bad].iloc[0]!r} (session {sessions.loc[bad, 'session_id'].iloc[0]!r});"
                f" allowed: {list(SPLITS)}"
            )
        out[:] = src.to_numpy()
    else:
        out[_newest(ts, config.test_fraction, config.test_start)] = "test"
    if not (out == "valid").any():
        train = out == "train"
        valid = _newest(ts[train], config.valid_fraction, config.valid_start)
        out[valid[valid].index] = "valid"
    return out


def partition(examples: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One frame per split, in the order of SPLITS (a split may be empty)."""
    return {s: examples[examples["split"] == s].reset_index(drop=True) for s in SPLITS}


def split_cutoff(parts: Mapping[str, pd.DataFrame], split: str) -> pd.Timestamp:
    """The newest example time a model evaluated on ``split`` could have learned from.

    valid: the newest train example; test: the newest train or valid example. With a time split this is
    the start of the held-out period; with a source's random split (MovieLens, Meetup Chicago) it is the
    end of the data, whose adapters keep held-out interactions out of the feature inputs.
    """
    if split not in SPLITS[1:]:
        raise ValueError(f"split must be one of {list(SPLITS[1:])}, got {split!r}")
    before = SPLITS[: SPLITS.index(split)]
    times = [pd.to_datetime(parts[s]["ts"], utc=True) for s in before if s in parts and len(parts[s])]
    if not times:
        raise ValueError(f"no {' or '.join(before)} examples: nothing a model evaluated on {split!r} learned from")
    return max(t.max() for t in times)
