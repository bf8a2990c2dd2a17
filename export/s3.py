"""An S3-compatible object store: the few calls the archive makes, over boto3.

boto3 is the AWS SDK itself: it speaks every S3 dialect the archive meets
(AWS, MinIO, SeaweedFS, Ceph), signs requests (SigV4), retries with backoff,
checks payload checksums and knows Object Lock and legal holds.  It is
synchronous; the archive runs it in its own thread, so the event loop and the
writer never wait on the store.

Credentials come from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` or
from a 0600 file; they are handed to boto3 and kept nowhere else, and never
appear in a message, a repr or a log line of ours.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from auditlog.engine.chain import read_secret_file
from auditlog.engine.errors import KeyFileError
from auditlog.export.errors import ExportError


class StoreError(ExportError):
    """The object store refused or could not be reached (the message says which)."""


class StoreMissing(StoreError):
    """No such object (or version)."""


@dataclass(frozen=True)
class Stored:
    """What the store says of one object version."""

    key: str
    version_id: str | None
    size: int
    sha256: str | None  # hex, when the store keeps a SHA-256 checksum
    lock_mode: str | None = None
    retain_until: dt.datetime | None = None
    legal_hold: bool | None = None


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket/prefix`` (the prefix without slashes at its ends)."""
    u = urlsplit(url)
    if u.scheme != "s3" or not u.netloc or u.query or u.fragment:
        raise ValueError(f'expected "s3://BUCKET/PREFIX", got {url!r}')
    return u.netloc, u.path.strip("/")


def read_credentials(path: str | None) -> tuple[str, str]:
    """(access key id, secret) from ``path`` (TOML: ``access_key_id``, ``secret_access_key``;
    it must be 0600 or stricter) or from the standard AWS environment variables."""
    if path is None:
        ak, sk = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not ak or not sk:
            raise StoreError(
                "no archive credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or [archive] credentials_file"
            )
        return ak, sk
    try:
        raw = read_secret_file(Path(path), None, "archive credentials")
    except KeyFileError as e:
        raise StoreError(str(e)) from None
    try:
        d = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        raise StoreError(f"archive credentials file {path} is not TOML") from None
    ak, sk = d.get("access_key_id"), d.get("secret_access_key")
    if not (isinstance(ak, str) and ak and isinstance(sk, str) and sk):
        raise StoreError(f"archive credentials file {path} needs access_key_id and secret_access_key")
    return ak, sk


def _why(e: Exception) -> str:
    if hasattr(e, "response"):
        err = e.response.get("Error", {})
        return f"{err.get('Code', 'error')}: {err.get('Message') or 'refused'}"
    return f"{type(e).__name__}: {e}"


def _code(e: Exception) -> str:
    if hasattr(e, "response"):
        return str(e.response.get("Error", {}).get("Code", ""))
    return ""


class S3Store:
    """One bucket and prefix of an S3-compatible store (thread-safe: boto3 clients are)."""

    def __init__(
        self,
        url: str,
        *,
        endpoint: str | None = None,
        region: str = "us-east-1",
        credentials_file: str | None = None,
        timeout: float = 10.0,
    ):
        self.url = url
        self.bucket, self.prefix = parse_url(url)
        self.endpoint = endpoint
        ak, sk = read_credentials(credentials_file)
        import boto3  # imported here: only a node with an archive pays for it
        import botocore.config

        self._s3 = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id=ak,
            aws_secret_access_key=sk,
            config=botocore.config.Config(
                connect_timeout=timeout,
                read_timeout=max(timeout, 30.0),
                retries={"max_attempts": 3, "mode": "standard"},
                s3={"addressing_style": "path"},
                max_pool_connections=16,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def __repr__(self) -> str:
        return f"S3Store({self.url!r}, endpoint={self.endpoint!r})"

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    # -- the bucket ---------------------------------------------------------------

    def lock_enabled(self) -> bool:
        """Is Object Lock enabled on the bucket?  StoreError when it cannot be asked."""
        try:
            got = self._s3.get_object_lock_configuration(Bucket=self.bucket)
        except Exception as e:
            if _code(e) in ("ObjectLockConfigurationNotFoundError", "ObjectLockConfigurationNotFound"):
                return False
            raise StoreError(f"{self.url}: cannot read the bucket's Object Lock configuration ({_why(e)})") from None
        return got.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"

    def check_bucket(self) -> None:
        """The bucket exists and these credentials reach it (StoreError otherwise)."""
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except Exception as e:
            raise StoreError(f"{self.url}: the bucket cannot be reached ({_why(e)})") from None

    # -- objects ------------------------------------------------------------------

    def put(
        self,
        name: str,
        data: bytes | Path,
        *,
        lock_mode: str | None = None,
        retain_until: dt.datetime | None = None,
        sha256: str | None = None,
    ) -> Stored:
        """Store ``data`` (bytes, or a file streamed from disk) under ``name`` with its
        SHA-256 checksum (``sha256``, hex, computed when not given; the store checks it
        on receipt), locked until ``retain_until`` in ``lock_mode`` when given."""
        if isinstance(data, Path):
            size = data.stat().st_size
            if sha256 is None:
                h = hashlib.sha256()
                with open(data, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                sha256 = h.hexdigest()
        else:
            size = len(data)
            sha256 = sha256 or hashlib.sha256(data).hexdigest()
        args = {
            "Bucket": self.bucket,
            "Key": self.key(name),
            "ContentLength": size,
            "ChecksumSHA256": base64.b64encode(bytes.fromhex(sha256)).decode(),
        }
        if lock_mode is not None:
            args["ObjectLockMode"] = lock_mode.upper()
            args["ObjectLockRetainUntilDate"] = retain_until
        try:
            if isinstance(data, Path):
                with open(data, "rb") as f:
                    r = self._s3.put_object(Body=f, **args)
            else:
                r = self._s3.put_object(Body=data, **args)
        except Exception as e:
            raise StoreError(f"{self.url}: cannot store {name} ({_why(e)})") from None
        return Stored(self.key(name), r.get("VersionId"), size, sha256, lock_mode, retain_until)

    def get(self, name: str, version_id: str | None = None) -> bytes:
        args = {"Bucket": self.bucket, "Key": self.key(name)}
        if version_id:
            args["VersionId"] = version_id
        try:
            return self._s3.get_object(**args)["Body"].read()
        except Exception as e:
            if _code(e) in ("NoSuchKey", "NoSuchVersion", "404"):
                where = f" version {version_id}" if version_id else ""
                raise StoreMissing(f"{self.url}: no object {name}{where}") from None
            raise StoreError(f"{self.url}: cannot read {name} ({_why(e)})") from None

    def download(self, name: str, version_id: str | None, dest: Path) -> None:
        """Write the object (at ``version_id``) to ``dest``, streamed (ranged GETs in
        parallel for a large one), never whole in memory."""
        extra = {"VersionId": version_id} if version_id else None
        try:
            self._s3.download_file(self.bucket, self.key(name), str(dest), ExtraArgs=extra)
        except Exception as e:
            if _code(e) in ("NoSuchKey", "NoSuchVersion", "404", "NotFound"):
                where = f" version {version_id}" if version_id else ""
                raise StoreMissing(f"{self.url}: no object {name}{where}") from None
            raise StoreError(f"{self.url}: cannot read {name} ({_why(e)})") from None

    def head(self, name: str, version_id: str | None = None) -> Stored:
        args = {"Bucket": self.bucket, "Key": self.key(name), "ChecksumMode": "ENABLED"}
        if version_id:
            args["VersionId"] = version_id
        try:
            h = self._s3.head_object(**args)
        except Exception as e:
            if _code(e) in ("NoSuchKey", "NoSuchVersion", "404", "NotFound"):
                raise StoreMissing(f"{self.url}: no object {name}") from None
            raise StoreError(f"{self.url}: cannot look up {name} ({_why(e)})") from None
        c = h.get("ChecksumSHA256")
        return Stored(
            self.key(name),
            h.get("VersionId"),
            h.get("ContentLength", 0),
            base64.b64decode(c).hex() if c and "-" not in c else None,
            h.get("ObjectLockMode"),
            h.get("ObjectLockRetainUntilDate"),
            {"ON": True, "OFF": False}.get(h.get("ObjectLockLegalHoldStatus")),
        )

    def names(self, under: str = "") -> list[str]:
        """Names (relative to the prefix) of the objects under ``under``, sorted."""
        base = self.key(under)
        out = []
        try:
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                for o in page.get("Contents", ()):
                    k = o["Key"]
                    out.append(k[len(self.prefix) + 1 :] if self.prefix else k)
        except Exception as e:
            raise StoreError(f"{self.url}: cannot list {under or 'the archive'} ({_why(e)})") from None
        return sorted(out)

    def _version_call(self, call: str, what: str, name: str, version_id: str | None, **extra) -> None:
        args = {"Bucket": self.bucket, "Key": self.key(name), **extra}
        if version_id:
            args["VersionId"] = version_id
        try:
            getattr(self._s3, call)(**args)
        except Exception as e:
            raise StoreError(f"{self.url}: cannot {what} {name} ({_why(e)})") from None

    def set_legal_hold(self, name: str, version_id: str | None, on: bool) -> None:
        self._version_call(
            "put_object_legal_hold",
            "set the legal hold of",
            name,
            version_id,
            LegalHold={"Status": "ON" if on else "OFF"},
        )

    def delete(self, name: str, version_id: str | None = None) -> None:
        self._version_call("delete_object", "delete", name, version_id)
