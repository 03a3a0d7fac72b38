"""The one error hierarchy of shardlog.

Every error a user can meet is a ``ShardlogError`` subclass whose message names the value, the
limit and the fix.  Errors cross process boundaries (shard -> coordinator -> CLI) as a plain dict
(``to_dict``) and are rebuilt as the same class on the other side (``from_dict``), so a
``BadQuery`` raised inside a shard is a ``BadQuery`` in the CLI too.

This module imports nothing of ours and nothing outside the standard library.
"""

from __future__ import annotations

from typing import Any


class ShardlogError(Exception):
    """Base class.  ``code`` is the stable wire name; ``retryable`` tells clients to retry."""

    code = "error"
    retryable = False
    #: HTTP status used by the HTTP listener for this error.
    http_status = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}

    @staticmethod
    def from_dict(data: Any) -> "ShardlogError":
        """Rebuild an error sent by ``to_dict``; unknown or malformed envelopes become
        ``ShardlogError`` rather than raising while handling an error."""
        if not isinstance(data, dict):
            return ShardlogError(f"malformed error envelope: {data!r:.200}")
        code = data.get("code")
        message = data.get("message")
        details = data.get("details")
        if not isinstance(message, str):
            message = repr(message)
        if not isinstance(details, dict):
            details = {}
        cls = _BY_CODE.get(code, ShardlogError) if isinstance(code, str) else ShardlogError
        err = cls.__new__(cls)
        ShardlogError.__init__(err, message, **{str(k): v for k, v in details.items()})
        return err

    def __reduce__(self):  # picklable, for multiprocessing and pytest-xdist
        return (_rebuild, (self.to_dict(),))


def _rebuild(data: dict[str, Any]) -> "ShardlogError":
    return ShardlogError.from_dict(data)


class BadQuery(ShardlogError):
    """The query string, a filter or an aggregation request is invalid."""

    code = "bad_query"
    http_status = 400


class BadRecord(ShardlogError):
    """One record is permanently invalid (too large, wrong type, ...).  Never retry it."""

    code = "bad_record"
    http_status = 400


class BadRequest(ShardlogError):
    """A request (frame, RPC call, HTTP body) is malformed or over a size limit."""

    code = "bad_request"
    http_status = 400


class StoreFull(ShardlogError):
    """The store reached its configured size cap."""

    code = "store_full"
    http_status = 507


class ShardUnavailable(ShardlogError):
    """A shard did not answer in time or is restarting.  Retry later."""

    code = "shard_unavailable"
    retryable = True
    http_status = 503


class Overloaded(ShardlogError):
    """Queues are full.  Retry after ``details['retry_after_s']``."""

    code = "overloaded"
    retryable = True
    http_status = 429


class CorruptData(ShardlogError):
    """Data read from disk or the wire does not have the expected shape."""

    code = "corrupt_data"
    http_status = 500


class FormatMismatch(ShardlogError):
    """A data dir was written by another format version or is not a shardlog store."""

    code = "format_mismatch"
    http_status = 500


class StoreLocked(ShardlogError):
    """Another process owns the store or data dir (single-instance lock held)."""

    code = "store_locked"
    http_status = 409


class NotFound(ShardlogError):
    """A named thing (alert rule, ...) does not exist."""

    code = "not_found"
    http_status = 404


_BY_CODE: dict[str, type[ShardlogError]] = {
    cls.code: cls
    for cls in (
        ShardlogError,
        BadQuery,
        BadRecord,
        BadRequest,
        StoreFull,
        ShardUnavailable,
        Overloaded,
        CorruptData,
        FormatMismatch,
        StoreLocked,
        NotFound,
    )
}
