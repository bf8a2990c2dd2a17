"""The node key and the HMAC-SHA256 chain.

Entry n is signed as ``HMAC(key, sig[n-1] || canonical(entry n))`` with
``sig[0]`` = 32 zero bytes.  Frames carry their own MAC, chained frame to frame
(see ``engine.frame``).  The key never leaves this module in printable form:
``NodeKey`` has no repr or str that shows it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

from auditlog.engine.errors import KeyFileError

KEY_BYTES = 32
GENESIS = bytes(32)
_KEY_ID_LABEL = b"auditlog key-id v1"


class NodeKey:
    """32 secret bytes with a fast HMAC-SHA256 (pads precomputed once)."""

    __slots__ = ("_key", "_inner", "_outer", "key_id")

    def __init__(self, key: bytes):
        if len(key) != KEY_BYTES:
            raise KeyFileError(f"node key must be {KEY_BYTES} bytes, got {len(key)}")
        self._key = key
        block = key.ljust(64, b"\0")
        # HMAC(K, m) = H(K^opad || H(K^ipad || m)); copying pre-fed hash states
        # halves the cost of hmac.digest for the short messages signed per entry.
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        #: public fingerprint of the key, stored in segment headers to detect
        #: segments written under another key; reveals nothing about the key.
        self.key_id = self.mac(_KEY_ID_LABEL)[:8]

    def mac(self, *parts: bytes) -> bytes:
        inner = self._inner.copy()
        for p in parts:
            inner.update(p)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def signer(self):
        """A fast two-argument function ``(prev_sig, canonical) -> sig``."""
        inner_copy = self._inner.copy
        outer_copy = self._outer.copy

        def sign(prev: bytes, canonical: bytes) -> bytes:
            i = inner_copy()
            i.update(prev)
            i.update(canonical)
            o = outer_copy()
            o.update(i.digest())
            return o.digest()

        return sign

    def derive(self, label: bytes) -> NodeKey:
        """A sub-key for derived files (indexes, line files, sealed state)."""
        return NodeKey(hmac.digest(self._key, b"auditlog derive:" + label, "sha256"))

    def equals(self, other: NodeKey) -> bool:
        return hmac.compare_digest(self._key, other._key)

    def __repr__(self) -> str:
        return f"NodeKey(id={self.key_id.hex()}, secret=<hidden>)"

    __str__ = __repr__

    def __reduce__(self):  # never pickle the secret by accident
        raise TypeError("NodeKey cannot be pickled")


def sign_entry(key: NodeKey, prev_sig: bytes, canonical: bytes) -> bytes:
    return key.mac(prev_sig, canonical)


def write_secret_file(path: Path, raw: bytes) -> None:
    """Create a secret file with mode 0600 from the start (never overwrites one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, raw)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


#: the largest secret file of no fixed size (credentials) that is read
MAX_SECRET_FILE = 64 * 1024


def read_secret_file(path: Path, size: int | None, what: str) -> bytes:
    """The ``size`` bytes of a secret file (``what`` names it in errors), refused when
    missing, readable by group or others, or of another length (``size`` None: any
    length up to :data:`MAX_SECRET_FILE`)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError(f"{what} file {path} is missing") from None
    except OSError as e:
        raise KeyFileError(f"cannot read {what} file {path}: {e.strerror}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise KeyFileError(
            f"{what} file {path} is readable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):o}); run: chmod 600 {path}"
        )
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read {what} file {path}: {e.strerror}") from None
    if size is None and len(raw) > MAX_SECRET_FILE:
        raise KeyFileError(f"{what} file {path} is larger than {MAX_SECRET_FILE} bytes")
    if size is not None and len(raw) != size:
        raise KeyFileError(f"{what} file {path} is damaged (expected {size} bytes)")
    return raw


def create_key_file(path: Path) -> NodeKey:
    """Create a new random key file with mode 0600 (never overwrites)."""
    raw = os.urandom(KEY_BYTES)
    write_secret_file(path, raw)
    return NodeKey(raw)


def load_key_file(path: Path) -> NodeKey:
    return NodeKey(read_secret_file(path, KEY_BYTES, "node key"))
