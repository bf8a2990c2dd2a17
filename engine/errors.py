"""The exception family: one base for the project, one sub-family per layer.

Integrity violations are *not* exceptions: a reader returns them as data
(see ``engine.verify``).  Exceptions here mean an operation could not be
carried out at all (bad input, a second writer, a disk error).
"""

from __future__ import annotations


class AuditLogError(Exception):
    """Base of every error the project raises on purpose."""

    #: HTTP status used when the error crosses the HTTP boundary.
    http_status = 500
    #: CLI exit code used when the error reaches the command line.
    exit_code = 2


class EngineError(AuditLogError):
    """Storage-engine failures."""


class NotInitialisedError(EngineError):
    http_status = 503


class AlreadyInitialisedError(EngineError):
    http_status = 409


class WriterLockedError(EngineError):
    """Another process holds the single-writer lock of this data dir."""

    http_status = 503


class KeyFileError(EngineError):
    """The node key is missing, unreadable or has unsafe permissions."""


class WriteFailedError(EngineError):
    """A write or fsync failed; the segment was cut back to its last good frame."""

    http_status = 503


class ConfigError(AuditLogError):
    """A configuration value or file is invalid."""

    http_status = 400
