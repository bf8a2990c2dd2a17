"""Signed notes and checkpoints, as C2SP specifies them (c2sp.org/signed-note,
c2sp.org/tlog-checkpoint), with Ed25519 keys.

A signed note is a text ending in a newline, a blank line, then one line per
signature: an em dash, a space, the key name, a space, and the base64 of the
key ID (4 bytes) followed by the signature of the text.  The key ID of an
Ed25519 key is the first four bytes of ``SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public
key)``; a verifier key is written ``name+hex(key ID)+base64(0x01 ‖ public key)``.

A checkpoint is a note whose text is the log's origin, its tree size (decimal)
and its RFC 6962 root hash (base64), one per line, then optional extension
lines.  Everything here is strict and bounded: a note that does not parse
exactly, or that no trusted key signed, raises :class:`NoteError` and is never
believed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from auditlog.engine.errors import EngineError
from auditlog.engine.signing import PUBLIC_BYTES, SIGNATURE_BYTES, SigningKey, verify

ED25519 = 0x01
EM_DASH = "\u2014"
#: notes larger than this are refused before they are parsed
MAX_NOTE_BYTES = 64 * 1024
#: signature lines a note may carry (the specification asks verifiers for at least 16)
MAX_SIGNATURES = 64
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


class NoteError(EngineError):
    """A note or checkpoint that does not parse, or is not signed by a trusted key."""


def _b64decode(s: str, what: str) -> bytes:
    if not _B64.fullmatch(s):
        raise NoteError(f"{what} is not base64")
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"{what} is not base64") from None
    if base64.b64encode(raw).decode() != s:  # one encoding only: no stray padding bits
        raise NoteError(f"{what} is not in canonical base64")
    return raw


def check_key_name(name: str) -> str:
    """A key name: non-empty, no spaces, no ``+``, no control characters."""
    if (
        type(name) is not str
        or not name
        or "+" in name
        or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in name)
    ):
        raise NoteError(f"invalid key name {name!r}: non-empty, without spaces, '+' or control characters")
    return name


def key_id(name: str, public_raw: bytes) -> bytes:
    """The 4-byte key ID of an Ed25519 key under ``name``."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public_raw).digest()[:4]


@dataclass(frozen=True)
class Verifier:
    """A trusted Ed25519 key: its name, ID and public key."""

    name: str
    key_id: bytes
    public_raw: bytes

    @classmethod
    def of(cls, name: str, public_raw: bytes) -> Verifier:
        check_key_name(name)
        if type(public_raw) is not bytes or len(public_raw) != PUBLIC_BYTES:
            raise NoteError("an Ed25519 public key is 32 bytes")
        return cls(name, key_id(name, public_raw), public_raw)

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        """A verifier key ``name+hex(key ID)+base64(0x01 ‖ public key)``."""
        parts = vkey.strip().split("+", 2) if type(vkey) is str else []
        if len(parts) != 3:
            raise NoteError("a verifier key is name+keyid+key")
        name, kid_hex, material = parts
        check_key_name(name)
        if not re.fullmatch(r"[0-9a-f]{8}", kid_hex):
            raise NoteError("a verifier key's ID is 8 lower-case hex digits")
        raw = _b64decode(material, "the verifier key")
        if len(raw) != 1 + PUBLIC_BYTES or raw[0] != ED25519:
            raise NoteError("the verifier key is not an Ed25519 key")
        v = cls.of(name, raw[1:])
        if v.key_id.hex() != kid_hex:
            raise NoteError("the verifier key's ID does not match its name and key")
        return v

    def __str__(self) -> str:
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(bytes([ED25519]) + self.public_raw).decode()}"


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_id: bytes
    signature: bytes


def _check_text(text: str) -> None:
    if type(text) is not str or not text.endswith("\n"):
        raise NoteError("a note's text ends with a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise NoteError("a note holds no control characters but newlines")


def signature_line(text: str, name: str, key: SigningKey) -> str:
    """The signature line of ``key`` (under ``name``) for the note text ``text``."""
    _check_text(text)
    check_key_name(name)
    sig = key_id(name, key.public_raw) + key.sign(text.encode())
    return f"{EM_DASH} {name} {base64.b64encode(sig).decode()}\n"


def sign(text: str, name: str, key: SigningKey) -> str:
    """The note of ``text`` signed by ``key`` under ``name``."""
    return text + "\n" + signature_line(text, name, key)


def parse(note: str | bytes) -> tuple[str, list[NoteSignature]]:
    """A note's text and signatures, checked for shape only (not trust)."""
    if isinstance(note, bytes):
        if len(note) > MAX_NOTE_BYTES:
            raise NoteError(f"a note is at most {MAX_NOTE_BYTES} bytes")
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("a note is UTF-8") from None
    if type(note) is not str:
        raise NoteError("a note is text")
    if len(note.encode("utf-8", "surrogatepass")) > MAX_NOTE_BYTES:
        raise NoteError(f"a note is at most {MAX_NOTE_BYTES} bytes")
    cut = note.rfind("\n\n")
    if cut < 0 or not note.endswith("\n"):
        raise NoteError("a note is its text, a blank line and signature lines")
    text, sig_block = note[: cut + 1], note[cut + 2 :]
    _check_text(text)
    lines = sig_block.split("\n")[:-1]
    if not lines:
        raise NoteError("a note carries at least one signature")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"a note carries at most {MAX_SIGNATURES} signatures")
    sigs = []
    for line in lines:
        if not line.startswith(EM_DASH + " "):
            raise NoteError("a signature line starts with an em dash and a space")
        fields = line[2:].split(" ")
        if len(fields) != 2:
            raise NoteError("a signature line is: em dash, key name, signature")
        name, b64 = fields
        check_key_name(name)
        raw = _b64decode(b64, "a signature")
        if len(raw) < 5:
            raise NoteError("a signature is a key ID and at least one byte")
        sigs.append(NoteSignature(name, raw[:4], raw[4:]))
    return text, sigs


def open_note(note: str | bytes, trusted: list[Verifier]) -> tuple[str, list[Verifier]]:
    """The text of ``note`` and the trusted keys that signed it.  Signatures of keys not
    in ``trusted`` are ignored; one of a trusted key that does not verify, or no
    trusted signature at all, is a :class:`NoteError`."""
    text, sigs = parse(note)
    known = {(v.name, v.key_id): v for v in trusted}
    signed: list[Verifier] = []
    for s in sigs:
        v = known.get((s.name, s.key_id))
        if v is None:
            continue
        if len(s.signature) != SIGNATURE_BYTES or not verify(v.public_raw, s.signature, text.encode()):
            raise NoteError(f"the signature of {s.name} does not verify")
        if v not in signed:
            signed.append(v)
    if not signed:
        raise NoteError("no trusted key signed this note")
    return text, signed


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: origin, size and RFC 6962 root hash (and extension lines)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        """The note text (c2sp.org/tlog-checkpoint)."""
        if not self.origin or "\n" in self.origin or len(self.root) != 32 or self.size < 0:
            raise NoteError("a checkpoint has an origin, a size ≥ 0 and a 32-byte root")
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """A checkpoint from its note text (strict: the three lines exactly as written)."""
        _check_text(text)
        lines = text[:-1].split("\n")
        if len(lines) < 3 or any(not line for line in lines):
            raise NoteError("a checkpoint is origin, size and root hash, each on its own line")
        origin, size, root = lines[:3]
        if not _DECIMAL.fullmatch(size):
            raise NoteError("a checkpoint's size is a decimal number without leading zeros")
        raw = _b64decode(root, "the root hash")
        if len(raw) != 32:
            raise NoteError("a checkpoint's root hash is 32 bytes")
        return cls(origin, int(size), raw, tuple(lines[3:]))
