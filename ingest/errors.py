"""Errors raised by the ingest layer: rejected events and rejected batches.

A rejected event is reported with *every* problem found (not just the first),
as structured data (``problems``) for the HTTP API and as one readable line
(``str()``) for the CLI and logs.
"""

from __future__ import annotations

from auditlog.engine.errors import AuditLogError

# str() lists at most this many problems; a batch of 10 000 bad events would
# otherwise produce a multi-megabyte message.
MAX_PROBLEMS_IN_MESSAGE = 20


class IngestError(AuditLogError):
    """Input from a client could not be accepted."""

    http_status = 400
    exit_code = 2


class InvalidEventError(IngestError):
    """One or more events failed validation; nothing was accepted.

    ``problems`` is a list of ``{"index": int, "field": str, "message": str}``.
    ``index`` is the event's position in its batch (``label="event"``) or its
    1-based line number in NDJSON input (``label="line"``); a negative index
    marks a problem with the batch as a whole.  A field written in brackets,
    such as ``"(event)"``, means the event itself (not one of its fields).
    """

    def __init__(self, problems: list[dict], label: str = "event") -> None:
        self.problems = problems
        self.label = label
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [self._render_one(p) for p in self.problems[:MAX_PROBLEMS_IN_MESSAGE]]
        extra = len(self.problems) - MAX_PROBLEMS_IN_MESSAGE
        if extra > 0:
            parts.append(f"... and {extra} more")
        return "; ".join(parts) if parts else "invalid event"

    def _render_one(self, p: dict) -> str:
        prefix = f"{self.label} {p['index']}: " if p["index"] >= 0 else ""
        field = p["field"]
        if field.startswith("("):
            return f"{prefix}{p['message']}"
        return f"{prefix}field {field!r}: {p['message']}"


class BatchTooLargeError(IngestError):
    """A batch holds more events than ``Limits.max_batch``."""

    http_status = 413

    def __init__(self, limit: int, count: int | None = None) -> None:
        self.limit = limit
        #: Number of events seen; ``None`` when reading stopped at the limit.
        self.count = count
        size = f"{count} events" if count is not None else f"more than {limit} events"
        super().__init__(f"batch too large: {size} (limit {limit} per batch)")
