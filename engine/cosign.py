"""Witness cosignatures (c2sp.org/tlog-cosignature, Ed25519 ``cosignature/v1``) and the
rule a witness follows before it gives one (FORMAT.md section 16).

A cosignature is a signed-note signature line over a log's checkpoint: key ID
``SHA-256(name ‖ "\\n" ‖ 0x04 ‖ public key)[:4]`` and a signature that is an
8-byte big-endian POSIX time followed by the Ed25519 signature of
``"cosignature/v1\\ntime <t>\\n"`` and the checkpoint's note text.  It says: as of
time t, the largest tree this witness has seen of that log, consistent with every
tree it saw before, has this root.

``judge`` is the witness's rule, free of I/O: given the last checkpoint it
cosigned for a log (size and root) and a new one with the old size the log
claims and a consistency proof, it either accepts or names the refusal.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

from auditlog.engine.merkle import verify_consistency
from auditlog.engine.note import EM_DASH, Checkpoint, NoteError, check_key_name, parse
from auditlog.engine.signing import PUBLIC_BYTES, SIGNATURE_BYTES, SigningKey, verify

COSIGNATURE_V1 = 0x04
HEADER = "cosignature/v1\n"
#: a cosignature's time is a u64 below 2^63 (c2sp.org/tlog-cosignature)
MAX_TIME = (1 << 63) - 1


def witness_name(node_id: str) -> str:
    """The cosigner name of node ``node_id`` as a witness."""
    return check_key_name(f"auditlog/{node_id}/witness")


def cosigner_key_id(name: str, public_raw: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([COSIGNATURE_V1]) + public_raw).digest()[:4]


def signed_message(text: str, timestamp: int) -> bytes:
    """What a ``cosignature/v1`` signs: the header, the time line and the note text."""
    return f"{HEADER}time {timestamp}\n{text}".encode()


def cosign(text: str, name: str, key: SigningKey, timestamp: int) -> str:
    """The cosignature line of ``key`` under ``name`` for the checkpoint text ``text``."""
    if type(timestamp) is not int or not 0 <= timestamp <= MAX_TIME:
        raise NoteError("a cosignature's time is a whole number of seconds below 2^63")
    check_key_name(name)
    sig = struct.pack(">Q", timestamp) + key.sign(signed_message(text, timestamp))
    return f"{EM_DASH} {name} {base64.b64encode(cosigner_key_id(name, key.public_raw) + sig).decode()}\n"


@dataclass(frozen=True)
class Cosigner:
    """A trusted witness: its name and Ed25519 public key."""

    name: str
    public_raw: bytes

    def __post_init__(self):
        check_key_name(self.name)
        if type(self.public_raw) is not bytes or len(self.public_raw) != PUBLIC_BYTES:
            raise NoteError("an Ed25519 public key is 32 bytes")

    @property
    def key_id(self) -> bytes:
        return cosigner_key_id(self.name, self.public_raw)


def cosignatures(note: str | bytes, cosigners: list[Cosigner]) -> dict[str, int]:
    """The trusted cosigners that cosigned ``note``: ``{name: time}``.  Lines of other
    keys are ignored; a line of a trusted cosigner that does not verify is a
    :class:`NoteError`."""
    text, sigs = parse(note)
    known = {(c.name, c.key_id): c for c in cosigners}
    out: dict[str, int] = {}
    for s in sigs:
        c = known.get((s.name, s.key_id))
        if c is None:
            continue
        if len(s.signature) != 8 + SIGNATURE_BYTES:
            raise NoteError(f"the cosignature of {s.name} is not a time and an Ed25519 signature")
        (t,) = struct.unpack(">Q", s.signature[:8])
        if t > MAX_TIME or not verify(c.public_raw, s.signature[8:], signed_message(text, t)):
            raise NoteError(f"the cosignature of {s.name} does not verify")
        out[c.name] = t
    return out


# -- the witness's rule -------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """Why a witness does not cosign.  ``kind``:

    ``stale_old``
        the log's old size is not the witness's last cosigned size (it asks again
        with the size the witness names: routine, not evidence);
    ``rollback``
        a smaller tree after a larger one;
    ``split_view``
        a different root for a size the witness cosigned;
    ``inconsistent``
        the consistency proof does not lead from the cosigned tree to the new one.

    The last three are evidence against the log, recorded by the witness.
    """

    kind: str
    detail: str
    witnessed_size: int

    @property
    def evidence(self) -> bool:
        return self.kind != "stale_old"


def judge(last: tuple[int, bytes] | None, old_size: int, cp: Checkpoint, proof: list[bytes]) -> Refusal | None:
    """None when a witness whose last cosigned tree of this log is ``last`` (size,
    root; None: none yet) may cosign ``cp``, given the log's ``old_size`` and its
    consistency proof from there; the :class:`Refusal` otherwise."""
    m, root = last if last is not None else (0, b"")
    if old_size != m:
        return Refusal("stale_old", f"the last tree cosigned has {m} entries, not {old_size}", m)
    if cp.size < m:
        return Refusal(
            "rollback", f"a tree of {cp.size} entries after a cosigned tree of {m} (the log was rolled back)", m
        )
    if cp.size == m:
        if m and cp.root != root:
            return Refusal("split_view", f"a second root for the tree of {m} entries (a split view)", m)
        if proof:
            return Refusal("inconsistent", "a consistency proof between equal sizes is empty", m)
        return None
    if m == 0:
        if proof:
            return Refusal("inconsistent", "a consistency proof from the empty tree is empty", m)
        return None
    if not verify_consistency(m, cp.size, root, cp.root, proof):
        return Refusal("inconsistent", f"the tree of {cp.size} entries does not extend the cosigned tree of {m}", m)
    return None
