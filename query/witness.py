"""Witnessed checkpoints: peers hold signed copies of each node's chain head.

Every ``checkpoint_interval`` a node signs ``(node, seq, signature of entry
seq, ts)`` with its cluster TLS key and sends it to its peers, which check the
signature against the certificate the node presented and append it to their
own logs as ``audit.checkpoint``.  Cluster verification then compares each
node's chain with what its peers witnessed: a log shorter than a witnessed
head (``witness_truncated``) or an entry whose signature differs from the
witnessed one (``witness_mismatch``, history rewritten even with the node's
HMAC key) is reported.  A local hash chain alone cannot see a cut tail.
"""

from __future__ import annotations

import hashlib
import json
import logging

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from engine import clock
from engine.entry import EntryDraft, format_ts
from query.errors import QueryError

log = logging.getLogger("auditlog.witness")
MAX_CHECKED_PER_WITNESS = 200


def checkpoint_bytes(cp: dict) -> bytes:
    return json.dumps([cp["node"], cp["seq"], cp["signature"], cp["ts"]], separators=(",", ":")).encode()


def sign_checkpoint(key_path, cp: dict) -> str:
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    return key.sign(checkpoint_bytes(cp), ec.ECDSA(hashes.SHA256())).hex()


def verify_checkpoint(cert_der: bytes, cp: dict, sig_hex: str) -> None:
    cert = x509.load_der_x509_certificate(cert_der)
    try:
        cert.public_key().verify(bytes.fromhex(sig_hex), checkpoint_bytes(cp), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError):
        raise QueryError("checkpoint signature does not verify against the peer's certificate") from None


def current_head(service) -> dict | None:
    """This node's committed head as a checkpoint body, or None for an empty log."""
    seq, ts = service.log.head()
    if seq < 1:
        return None
    e = service.log.get(seq)
    if e is None or e.integrity != "ok":
        return None
    return {"node": service.node_id, "seq": seq, "signature": e.signature.hex(), "ts": format_ts(e.ts)}


def witness_draft(cp: dict, witness_sig: str, cert_der: bytes) -> EntryDraft:
    return EntryDraft("system", "audit.checkpoint", cp["node"], details={
        "node": cp["node"], "seq": cp["seq"], "signature": cp["signature"], "ts": cp["ts"],
        "witness_signature": witness_sig, "cert_sha256": hashlib.sha256(cert_der).hexdigest(),
        "received": format_ts(clock.now_us())})


def check_witnessed(node: str, checkpoints: list[dict], head_seq: int, first_seq: int,
                    sigs: dict[int, str | None], witnesses: dict[int, str]) -> list[dict]:
    """Violations of ``node``'s log against checkpoints its peers hold."""
    out = []
    for cp in checkpoints:
        s = cp["seq"]
        who = witnesses.get(s, "a peer")
        if s > head_seq:
            out.append({"kind": "witness_truncated", "node": node, "seq_from": head_seq + 1, "seq_to": s,
                        "segment": None,
                        "detail": f"{who} witnessed seq {s} at {cp['ts']}, but the log ends at seq {head_seq}"})
        elif s >= first_seq:
            have = sigs.get(s)
            if have is None:
                out.append({"kind": "witness_truncated", "node": node, "seq_from": s, "seq_to": s,
                            "segment": None, "detail": f"{who} witnessed seq {s}, which is missing"})
            elif have != cp["signature"]:
                out.append({"kind": "witness_mismatch", "node": node, "seq_from": s, "seq_to": s,
                            "segment": None,
                            "detail": f"entry {s} differs from the one {who} witnessed at {cp['ts']} "
                                      "(history rewritten)"})
    return out
