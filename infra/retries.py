"""Which failures are worth a retry: connection drops, timeouts, throttling and 5xx, not mistakes.

Flow tasks that touch the network or shared files retry (``retries=2``), but a retry only helps an error
that can pass by itself. A missing bucket, a denied permission, an unknown model, a bad name or a data
contract violation fail the same way every time: retrying them triples the time to a clear error. Tasks pass
:func:`retry_transient` as Prefect's ``retry_condition_fn``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

# S3 error codes that can pass: throttling, server-side failures, request timeouts.
TRANSIENT_S3_CODES = frozenset({
    "500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown", "Throttling",
    "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
})


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_transient(exc: BaseException) -> bool:
    """True for an error that a later attempt may not meet (this exception or one it was raised from)."""
    try:
        from botocore.exceptions import ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as BotoConnectionError
    except ImportError:  # pragma: no cover - boto3 is a dependency
        ClientError = BotoConnectionError = HTTPClientError = ()  # type: ignore[assignment,misc]
    for e in _chain(exc):
        if ClientError and isinstance(e, ClientError):
            err = getattr(e, "response", {}).get("Error", {})
            status = str(getattr(e, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            return str(err.get("Code", "")) in TRANSIENT_S3_CODES or status in TRANSIENT_S3_CODES
        if isinstance(e, (BotoConnectionError, HTTPClientError, ConnectionError, TimeoutError)):
            return True
        if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
            return True
    return False


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only a transient failure (see :func:`is_transient`)."""
    exc = state.data if isinstance(getattr(state, "data", None), BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception as e:  # noqa: BLE001 - an unreadable result: judge the error reading it
            exc = e
    return isinstance(exc, BaseException) and is_transient(exc)


__all__ = ["TRANSIENT_S3_CODES", "is_transient", "retry_transient"]
