"""Names that become paths (datasets, artifacts, models, runs): one rule, checked where a name enters.

A name is 1-128 letters, digits, '.', '_' and '-', starting with a letter or digit: it can never climb out of
its parent directory (no '/', no '..'), be absolute, or hide as a dot-file.
"""

from __future__ import annotations

import re

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
NAME_RE = re.compile(NAME_PATTERN)


class InvalidNameError(ValueError):
    """A name that would become an unsafe or ambiguous path."""


def check_name(name: str, what: str = "name", error: type[InvalidNameError] = InvalidNameError) -> str:
    """``name`` when it is safe to use as one path component; ``error`` (an :class:`InvalidNameError`)
    otherwise."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise error(
            f"invalid {what} {name!r}: use 1-128 letters, digits, '.', '_' and '-', starting with a letter or "
            "digit (e.g. 'synthetic-default'); it becomes a directory name, so no '/', '..' or absolute paths"
        )
    return name


def default_model_name(dataset: str, variant: str | None = None) -> str:
    """The registered name of a dataset's model: ``<dataset>-two-tower`` (the one the nightly serves), or
    ``<dataset>-two-tower-<variant>`` (``text``, ``hnm``, ...)."""
    return f"{dataset}-two-tower" + (f"-{variant}" if variant else "")


def default_examples_name(dataset: str) -> str:
    """The published training examples of a dataset."""
    return f"{dataset}-examples"


__all__ = ["InvalidNameError", "NAME_PATTERN", "NAME_RE", "check_name", "default_examples_name", "default_model_name"]
