"""auditlog: a tamper-evident, clustered, append-only audit log.

The layers are subpackages: ``auditlog.engine`` (the store), ``auditlog.ingest``
(the write path), ``auditlog.query`` (reads, the HTTP service, the cluster),
``auditlog.export`` (formats and delivery), ``auditlog.cli`` and
``auditlog.bench``.  In the source tree each is a top-level folder, mapped
under this package by ``pyproject.toml``.
"""
