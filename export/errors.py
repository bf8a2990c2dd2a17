"""Errors of the export layer (renderers, forwarders, reports)."""

from __future__ import annotations

from auditlog.engine.errors import AuditLogError


class ExportError(AuditLogError):
    """An export could not be produced or delivered."""
