"""Errors of the query layer: bad filters and other unusable read requests.

They are input errors, so they map to HTTP 400 and CLI exit code 2; the message
is meant to be shown to the person who typed the filter.
"""

from __future__ import annotations

from auditlog.engine.errors import AuditLogError

# A hostile or pasted-by-mistake value can be huge; the message only needs
# enough of it to be recognised.
_MAX_SHOWN = 80
_NO_VALUE = object()


class QueryError(AuditLogError):
    """A read request that cannot be carried out as asked."""

    http_status = 400
    exit_code = 2


class InvalidFilterError(QueryError):
    """A filter parameter whose value cannot be used; names the parameter and the value.

    Raise it as ``InvalidFilterError(param, value, reason)``; the one-argument
    form ``InvalidFilterError(message)`` is for request-level problems that
    have no single value (``param`` and ``value`` are then None).
    """

    param: str | None
    value: object
    reason: str | None

    def __init__(self, param: str, value: object = _NO_VALUE, reason: str | None = None) -> None:
        if value is _NO_VALUE:
            self.param, self.value, self.reason = None, None, param
            super().__init__(param)
            return
        self.param = param
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {param} {_shown(value)}: {reason}")

    def __reduce__(self):  # keep the error picklable despite the custom signature
        if self.param is None:
            return (type(self), (self.reason,))
        return (type(self), (self.param, self.value, self.reason))


def _shown(value: object) -> str:
    """repr() escapes control characters, so a value cannot forge log lines."""
    text = repr(value)
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 3] + "..."
    return text
