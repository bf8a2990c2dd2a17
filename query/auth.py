"""API keys and roles.

A key looks like ``alk_<id>_<secret>``: the id finds the record, the secret
(32 random bytes, base32) is checked against its SHA-256, compared in constant
time.  Only hashes are stored (``<data-dir>/state/api_keys.json``, mode 0600);
the key itself is shown once, when it is created.  High-entropy random keys
need no slow password hash: guessing 256 bits is out of reach either way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.datadir import write_atomic
from query.errors import QueryError

ROLES = ("writer", "reader", "admin")
#: what each role may do; admin includes reader, nothing includes writer's append
ROLE_GRANTS = {"writer": {"append"}, "reader": {"read"}, "admin": {"read", "admin"}}
KEY_FILE = "api_keys.json"


class AuthError(QueryError):
    http_status = 401


class ForbiddenError(QueryError):
    http_status = 403


class KeyNotFoundError(QueryError):
    http_status = 404


@dataclass
class ApiKey:
    id: str
    name: str
    role: str
    hash: str
    created: float
    revoked: float | None = None

    def public(self) -> dict:
        return {"id": self.id, "name": self.name, "role": self.role,
                "created": _iso(self.created), "revoked": _iso(self.revoked) if self.revoked else None}

    def __repr__(self) -> str:
        return f"ApiKey(id={self.id!r}, name={self.name!r}, role={self.role!r})"


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_role(role: str) -> str:
    if role not in ROLES:
        raise QueryError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return role


def check_name(name) -> str:
    # C0/C1 controls as ingest refuses them in any logged field; lone surrogates cannot be
    # encoded (the key was saved, then its audit entry failed: an unaudited key)
    if not isinstance(name, str) or not name.strip() or len(name) > 128 or any(
            ord(c) < 32 or 127 <= ord(c) <= 159 or 0xD800 <= ord(c) <= 0xDFFF for c in name):
        raise QueryError("name must be 1-128 printable characters")
    return name


class KeyStore:
    """The node's API keys (hashed), persisted atomically."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / KEY_FILE
        self._lock = threading.Lock()
        self._keys: dict[str, ApiKey] = {}
        self._mtime = None
        self._checked = 0.0
        self._load()

    def _load(self, max_age: float = 0.0) -> None:
        """Reload the key file if it changed; ``max_age`` skips the check when
        the file was looked at that recently (changes made through this store
        are seen at once either way)."""
        now = time.monotonic()
        if max_age and now - self._checked < max_age:
            return
        self._checked = now
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._keys = {}
            return
        if st.st_mtime_ns == self._mtime:
            return
        try:
            data = json.loads(self.path.read_text())
            self._keys = {d["id"]: ApiKey(**d) for d in data["keys"]}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise QueryError(f"API key store {self.path} is unreadable: {e}") from None
        self._mtime = st.st_mtime_ns

    def _save(self) -> None:
        self.path.parent.mkdir(mode=0o700, exist_ok=True)
        body = json.dumps({"keys": [asdict(k) for k in self._keys.values()]}, indent=1)
        write_atomic(self.path, body.encode(), mode=0o600)
        self._mtime = self.path.stat().st_mtime_ns

    def create(self, name: str, role: str) -> tuple[ApiKey, str]:
        """A new key; returns (record, the key string shown once)."""
        check_role(role)
        check_name(name)
        with self._lock:
            self._load()
            kid = secrets.token_hex(6)
            secret = base64.b32encode(secrets.token_bytes(32)).decode().rstrip("=").lower()
            rec = ApiKey(kid, name, role, _hash(secret), time.time())
            self._keys[kid] = rec
            self._save()
        return rec, f"alk_{kid}_{secret}"

    def revoke(self, kid: str) -> ApiKey:
        with self._lock:
            self._load()
            rec = self._keys.get(kid)
            if rec is None:
                raise KeyNotFoundError(f"no API key with id {kid!r}")
            if rec.revoked is None:
                rec.revoked = time.time()
                self._save()
            return rec

    def list(self) -> list[ApiKey]:
        with self._lock:
            self._load()
            return sorted(self._keys.values(), key=lambda k: k.created)

    def authenticate(self, token: str | None) -> ApiKey:
        """The key record for a presented token, or AuthError (never says which part was wrong)."""
        if not token:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        parts = token.split("_")
        if len(parts) != 3 or parts[0] != "alk":
            raise AuthError("invalid API key")
        with self._lock:
            self._load(max_age=1.0)
            rec = self._keys.get(parts[1])
        expected = rec.hash if rec is not None else _hash("x" * 52)
        ok = hmac.compare_digest(_hash(parts[2]), expected)
        if rec is None or not ok or rec.revoked is not None:
            raise AuthError("invalid API key")
        return rec


def require(key: ApiKey, grant: str) -> None:
    if grant not in ROLE_GRANTS.get(key.role, ()):
        raise ForbiddenError(f"the {key.role!r} role may not do this (needs {grant!r})")
