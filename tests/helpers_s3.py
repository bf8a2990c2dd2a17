"""The S3-compatible server of the archive tests: SeaweedFS, as the benchmarks run it
(``auditlog.bench.s3server``)."""

from __future__ import annotations

from auditlog.bench.s3server import ACCESS_KEY, SECRET_KEY, SeaweedS3

__all__ = ["ACCESS_KEY", "SECRET_KEY", "SeaweedS3"]
