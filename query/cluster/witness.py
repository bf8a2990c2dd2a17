"""Witnessed checkpoints: peers hold signed copies of each node's chain head.

Every ``checkpoint_interval`` a node signs ``(node, seq, signature of entry
seq, ts)`` with its cluster TLS key and sends it to its peers, which check the
signature against the certificate the node presented and append it to their
own logs as ``audit.checkpoint``.  Cluster verification then compares each
node's chain with what its peers witnessed: a log shorter than a witnessed
head (``witness_truncated``) or an entry whose signature differs from the
witnessed one (``witness_mismatch``, history rewritten even with the node's
HMAC key) is reported.  A local hash chain alone cannot see a cut tail.

Every checkpoint a witness holds is checked, however old, unless retention
has since dropped its seq from the node's log: the witness's checkpoints are
streamed in chunks and the node is asked for the signatures at
``SIGNATURE_BATCH`` seqs at a time, so neither memory nor a request grows
with the age of the cluster.  Checkpoints that fail the same way one after
the other (as a witness holds them) make one violation naming their seq
range and how many there are, so a rewritten stretch of history is one
finding per witness, not thousands.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from engine import clock
from engine.entry import EntryDraft, format_ts
from query.errors import QueryError

log = logging.getLogger("auditlog.witness")

#: seqs per signature request to a node (the peer listener takes up to
#: ``routes.peer.MAX_SIGNATURE_SEQS``); small enough that the node's answer
#: comes well within ``peer_timeout`` even when the seqs lie far apart
SIGNATURE_BATCH = 200
#: a node computing signatures walks its log from one requested seq to the
#: next, unless they are more than this many entries apart (then a fresh scan
#: starts at the next one: a scan's start costs about as much as this walk)
WALK_GAP = 1024
#: violations reported per node and witness; further runs are folded into one
#: violation per kind (damage scattered all over a log must not grow the report
#: without bound)
MAX_RUNS_PER_WITNESS = 1000


def checkpoint_bytes(cp: dict) -> bytes:
    return json.dumps([cp["node"], cp["seq"], cp["signature"], cp["ts"]], separators=(",", ":")).encode()


def sign_checkpoint(key_path: str | Path, cp: dict) -> str:
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
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
    return EntryDraft(
        "system",
        "audit.checkpoint",
        cp["node"],
        details={
            "node": cp["node"],
            "seq": cp["seq"],
            "signature": cp["signature"],
            "ts": cp["ts"],
            "witness_signature": witness_sig,
            "cert_sha256": hashlib.sha256(cert_der).hexdigest(),
            "received": format_ts(clock.now_us()),
        },
    )


def checkpoint_of(e, about: str) -> dict | None:
    """The checkpoint about node ``about`` that a witness's ``audit.checkpoint``
    entry holds, or None when the entry is no such evidence (it does not verify,
    was not written by the log itself, or is about another node)."""
    d = e.details
    if (
        e.integrity != "ok"
        or e.user != "system"
        or not isinstance(d, dict)
        or d.get("node") != about
        or type(d.get("seq")) is not int
    ):
        return None
    return {"seq": d["seq"], "signature": d.get("signature"), "ts": d.get("ts")}


class WitnessFindings:
    """Violations of node ``node``'s log against the checkpoints one witness holds.

    Fed in the witness's order, a chunk at a time, with the node's answer for
    that chunk (``signatures_at``: first_seq, head_seq, sigs).  A run of
    checkpoints that fail the same way one after the other is one violation.
    """

    def __init__(self, node: str, witness: str):
        self.node = node
        self.witness = witness
        self.violations: list[dict] = []
        self._run: dict | None = None
        self._overflow: dict[str, dict] = {}

    def check(self, checkpoints: list[dict], answer: dict) -> None:
        head_seq, first_seq = answer["head_seq"], answer["first_seq"]
        sigs = answer.get("sigs", {})
        for cp in checkpoints:
            s = cp["seq"]
            if s > head_seq:
                self._note("beyond", cp, head_seq)
            elif s < first_seq:
                self._end_run()  # dropped by retention: no evidence either way
            else:
                have = sigs.get(str(s))
                if have is None:
                    self._note("missing", cp, head_seq)
                elif have != cp["signature"]:
                    self._note("mismatch", cp, head_seq)
                else:
                    self._end_run()

    def finish(self) -> list[dict]:
        self._end_run()
        for run in self._overflow.values():
            v = self._violation(run)
            v["detail"] += f" [{run['runs']} separate runs beyond the first {MAX_RUNS_PER_WITNESS} findings]"
            self.violations.append(v)
        self._overflow = {}
        return self.violations

    def _note(self, how: str, cp: dict, head_seq: int) -> None:
        run = self._run
        if run is not None and run["how"] == how:
            _extend(run, cp["seq"], cp["seq"], 1, cp["ts"], head_seq)
            return
        self._end_run()
        self._run = {
            "how": how,
            "seq_from": cp["seq"],
            "seq_to": cp["seq"],
            "count": 1,
            "first_ts": cp["ts"],
            "last_ts": cp["ts"],
            "head_seq": head_seq,
            "runs": 1,
        }

    def _end_run(self) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        if len(self.violations) < MAX_RUNS_PER_WITNESS:
            self.violations.append(self._violation(run))
            return
        into = self._overflow.setdefault(run["how"], dict(run, runs=0, count=0))
        _extend(into, run["seq_from"], run["seq_to"], run["count"], run["last_ts"], run["head_seq"])
        into["runs"] += 1

    def _violation(self, run: dict) -> dict:
        who, how, n = self.witness, run["how"], run["count"]
        lo, hi, head = run["seq_from"], run["seq_to"], run["head_seq"]
        when = run["first_ts"] if n == 1 else f"{run['first_ts']} .. {run['last_ts']}"
        if how == "beyond":
            kind, seq_from = "witness_truncated", head + 1
            detail = (
                f"{who} witnessed seq {hi} at {when}, but the log ends at seq {head}"
                if n == 1
                else f"{who} witnessed seqs up to {hi} ({n} checkpoints, {when}), but the log ends at seq {head}"
            )
        elif how == "missing":
            kind, seq_from = "witness_truncated", lo
            detail = (
                f"{who} witnessed seq {lo}, which is missing"
                if n == 1
                else f"{who} witnessed seqs in {lo}..{hi} ({n} checkpoints), which are missing"
            )
        else:
            kind, seq_from = "witness_mismatch", lo
            detail = (
                f"entry {lo} differs from the one {who} witnessed at {when} (history rewritten)"
                if n == 1
                else f"entries in {lo}..{hi} differ from the ones {who} witnessed "
                f"({n} checkpoints, {when}) (history rewritten)"
            )
        return {"kind": kind, "node": self.node, "seq_from": seq_from, "seq_to": hi, "segment": None, "detail": detail}


def _extend(run: dict, lo: int, hi: int, count: int, last_ts, head_seq: int) -> None:
    run["seq_from"] = min(run["seq_from"], lo)
    run["seq_to"] = max(run["seq_to"], hi)
    run["count"] += count
    run["last_ts"] = last_ts
    run["head_seq"] = head_seq
