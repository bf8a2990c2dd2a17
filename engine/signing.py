"""The node's signing key: Ed25519, for what others check without the node key.

The node key (``engine.chain``) is symmetric: whoever can check an HMAC can
also make one.  The signing key is the node's asymmetric identity: its private
half stays in ``<data-dir>/node.sign`` (the 32-byte Ed25519 seed, mode 0600,
like ``node.key``), its public half is in ``<data-dir>/node.pub`` (PEM,
SubjectPublicKeyInfo) for anyone to hold, and an auditor with only the public
key can check what the node signed.

``init`` creates the pair; a data dir from before has none until its writer
starts (``serve``, ``append``, ``import``), which creates it.  ``node.pub`` is a
copy for handing out: the key is always taken from ``node.sign``, and a
``node.pub`` that does not match it is an error, never believed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from auditlog.engine.chain import read_secret_file, write_secret_file
from auditlog.engine.errors import KeyFileError

SIGN_KEY_FILE = "node.sign"
PUBLIC_KEY_FILE = "node.pub"
SEED_BYTES = 32
PUBLIC_BYTES = 32
SIGNATURE_BYTES = 64
#: a PEM public key file is far smaller than this; anything bigger is not one
MAX_PUBLIC_FILE = 4096


def fingerprint(public_raw: bytes) -> str:
    """``SHA256:`` and the hex SHA-256 of the raw 32-byte public key."""
    return "SHA256:" + hashlib.sha256(public_raw).hexdigest()


class SigningKey:
    """The private half, kept out of reprs, pickles and copies; it signs, and says
    its public half."""

    __slots__ = ("_private", "public_raw")

    def __init__(self, seed: bytes):
        if type(seed) is not bytes or len(seed) != SEED_BYTES:
            raise KeyFileError(f"a signing key is {SEED_BYTES} bytes")
        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        self.public_raw = self._private.public_key().public_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        return self._private.sign(message)

    def public_pem(self) -> bytes:
        return public_pem(self.public_raw)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_raw)

    def __repr__(self) -> str:
        return f"SigningKey(<private half hidden>, public {self.fingerprint})"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a signing key cannot be pickled")

    def __deepcopy__(self, memo):
        raise TypeError("a signing key cannot be copied")


def public_pem(public_raw: bytes) -> bytes:
    """A raw Ed25519 public key as PEM (SubjectPublicKeyInfo)."""
    return Ed25519PublicKey.from_public_bytes(public_raw).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def parse_public_key(data: bytes, source: str) -> bytes:
    """The raw 32-byte Ed25519 public key of a PEM file's bytes (``source`` names it in
    errors)."""
    if len(data) > MAX_PUBLIC_FILE:
        raise KeyFileError(f"{source} is not a public key file ({len(data)} bytes)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise KeyFileError(f"{source} is not a PEM public key") from None
    except Exception as e:  # cryptography's UnsupportedAlgorithm and the like
        raise KeyFileError(f"{source} is not a usable public key ({type(e).__name__})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{source} holds a {type(key).__name__.removesuffix('PublicKey')} key, not an Ed25519 one")
    return key.public_bytes_raw()


def read_public_key(path: Path) -> bytes:
    """The raw Ed25519 public key in the PEM file ``path``."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PUBLIC_FILE + 1)
    except OSError as e:
        raise KeyFileError(f"cannot read {path}: {e.strerror or e}") from None
    return parse_public_key(data, str(path))


def verify(public_raw: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is the key's Ed25519 signature of ``message`` (never raises
    on hostile input)."""
    if type(public_raw) is not bytes or len(public_raw) != PUBLIC_BYTES:
        return False
    if type(signature) is not bytes or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, message)
        return True
    except (InvalidSignature, ValueError):
        return False


def create_signing_key(sign_path: Path, pub_path: Path) -> SigningKey:
    """A new key pair: the seed in ``sign_path`` (mode 0600, never overwritten), the
    public key in ``pub_path`` (PEM, mode 0644)."""
    from auditlog.engine.datadir import write_atomic

    seed = Ed25519PrivateKey.generate().private_bytes_raw()
    write_secret_file(sign_path, seed)
    key = SigningKey(seed)
    write_atomic(pub_path, key.public_pem(), mode=0o644, sync_dir=True)
    return key


def load_signing_key(sign_path: Path, pub_path: Path | None = None) -> SigningKey:
    """The key in ``sign_path`` (which must be mode 0600 and 32 bytes); when
    ``pub_path`` exists it must hold the same key's public half."""
    seed = read_secret_file(sign_path, SEED_BYTES, "signing key")
    key = SigningKey(seed)
    if pub_path is not None:
        try:
            data = Path(pub_path).read_bytes()
        except FileNotFoundError:
            data = None
        except OSError as e:
            raise KeyFileError(f"cannot read {pub_path}: {e.strerror}") from None
        if data is not None and parse_public_key(data, str(pub_path)) != key.public_raw:
            raise KeyFileError(
                f"{pub_path} does not hold the public half of {sign_path}; "
                f"the node's public key is {key.fingerprint} (auditlog keys public)"
            )
    return key
