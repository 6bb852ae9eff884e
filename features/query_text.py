"""Query text as the project compares queries: mining's query groups, query selection and the warm/cold
split of held-out sessions all normalize it the same way."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pandas as pd

_SPACE = re.compile(r"\s+")


def normalize_query(text: pd.Series | Sequence[str] | str) -> pd.Series | str:
    """Lower-case, whitespace collapsed and stripped; missing -> ""."""
    if isinstance(text, str):
        return _SPACE.sub(" ", text).strip().lower()
    s = pd.Series(text, dtype=object) if not isinstance(text, pd.Series) else text
    return s.fillna("").astype(str).str.replace(_SPACE, " ", regex=True).str.strip().str.lower()
