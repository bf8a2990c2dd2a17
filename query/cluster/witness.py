"""Witnesses that cosign: every node checks its peers' signed checkpoints and
cosigns each only after a consistency proof from the last one it cosigned
(FORMAT.md section 16; ``engine.cosign`` holds the rule and the format).

A node hands its newest checkpoint to each peer (``checkpoints.cosign_round``)
as c2sp.org/tlog-witness does: ``old <size>``, the consistency proof from that
size, a blank line and the signed note.  The witness takes the log's Ed25519
key from the log's certificate (the mTLS one, which the cluster CA issued with
``--signing-key``), checks the note's signature and origin, and judges it
against the last tree it cosigned of that log.  What it cosigns it records in
its own log (``audit.checkpoint``: the note, its cosignature, the key) before
answering; a smaller tree after a larger one, a second root for a size or a
proof that does not hold it refuses and records (``audit.checkpoint_refused``),
once per distinct refusal.  Its state (the last tree cosigned per log) is a
projection of those entries.

``verify?scope=cluster`` reads, for every node and every witness, the newest
tree the witness cosigned of the node and its refusals, and asks the node for a
consistency proof from that tree to its own newest one (``ClusterFindings``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re

from cryptography import x509

from auditlog.engine import clock
from auditlog.engine.cosign import Refusal, cosign, judge, witness_name
from auditlog.engine.entry import EntryDraft, format_ts
from auditlog.engine.identity import signing_key_of
from auditlog.engine.note import Checkpoint, NoteError, Verifier, open_note
from auditlog.engine.tree import origin
from auditlog.query.errors import QueryError

log = logging.getLogger("auditlog.witness")

COSIGNED_ACTION = "audit.checkpoint"
REFUSED_ACTION = "audit.checkpoint_refused"
#: a submission's size at most (the note is at most 64 KiB, a proof 64 hashes)
MAX_SUBMISSION = 80 * 1024
MAX_PROOF_HASHES = 64
_OLD = re.compile(r"old (0|[1-9][0-9]{0,18})")
#: the violation kind each refusal is evidence of
REFUSAL_KINDS = {
    "rollback": "witness_truncated",
    "inconsistent": "witness_mismatch",
    "split_view": "witness_split_view",
}


class WitnessRefused(QueryError):
    """The witness does not cosign; ``refusal`` says why."""

    STATUS = {"stale_old": 409, "split_view": 409, "rollback": 400, "inconsistent": 422}

    def __init__(self, refusal: Refusal):
        super().__init__(refusal.detail)
        self.refusal = refusal
        self.http_status = self.STATUS[refusal.kind]


class WitnessForbidden(QueryError):
    http_status = 403


# -- the submission (c2sp.org/tlog-witness add-checkpoint body) -------------------------


def submission(old_size: int, proof: list[bytes], note: str) -> bytes:
    lines = [f"old {old_size}", *(base64.b64encode(h).decode() for h in proof)]
    return ("\n".join(lines) + "\n\n" + note).encode()


def parse_submission(body: bytes) -> tuple[int, list[bytes], str]:
    """``(old size, consistency proof, signed note)`` of an add-checkpoint body."""
    if len(body) > MAX_SUBMISSION:
        raise QueryError(f"a checkpoint submission is at most {MAX_SUBMISSION} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise QueryError("a checkpoint submission is UTF-8 text") from None
    head, sep, note = text.partition("\n\n")
    lines = head.split("\n")
    m = _OLD.fullmatch(lines[0]) if sep else None
    if m is None:
        raise QueryError("a checkpoint submission is 'old <size>', the proof lines, a blank line and the note")
    if len(lines) - 1 > MAX_PROOF_HASHES:
        raise QueryError(f"a consistency proof has at most {MAX_PROOF_HASHES} hashes")
    proof = []
    for line in lines[1:]:
        try:
            h = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            h = b""
        if len(h) != 32 or base64.b64encode(h).decode() != line:
            raise QueryError("each proof line is a base64 SHA-256 hash")
        proof.append(h)
    return int(m.group(1)), proof, note


def cosigned_draft(node: str, cp: Checkpoint, note: str, line: str, vkey: Verifier) -> EntryDraft:
    return EntryDraft(
        "system",
        COSIGNED_ACTION,
        node,
        details={
            "node": node,
            "size": cp.size,
            "root": cp.root.hex(),
            "checkpoint": note,
            "cosignature": line,
            "key": str(vkey),
            "received": format_ts(clock.now_us()),
        },
    )


def refused_draft(node: str, cp: Checkpoint, note: str, r: Refusal, last: tuple[int, bytes] | None) -> EntryDraft:
    return EntryDraft(
        "system",
        REFUSED_ACTION,
        node,
        success=False,
        details={
            "node": node,
            "reason": r.kind,
            "detail": r.detail,
            "size": cp.size,
            "root": cp.root.hex(),
            "checkpoint": note,
            "cosigned_size": last[0] if last else 0,
            "cosigned_root": last[1].hex() if last else None,
        },
    )


def cosigned_of(e, about: str) -> dict | None:
    """The tree a witness's ``audit.checkpoint`` entry says it cosigned of ``about``
    (size, root bytes, the log's key, when), or None when the entry is no such
    record (it does not verify, was not written by the log itself, is about another
    node or of an earlier version)."""
    d = e.details
    if e.integrity != "ok" or e.user != "system" or e.action != COSIGNED_ACTION or not isinstance(d, dict):
        return None
    if d.get("node") != about or type(d.get("size")) is not int or not isinstance(d.get("root"), str):
        return None
    try:
        root = bytes.fromhex(d["root"])
        key = Verifier.parse(d.get("key", ""))
    except (ValueError, NoteError):
        return None
    if len(root) != 32:
        return None
    return {"size": d["size"], "root": root, "key": key, "ts": format_ts(e.ts), "seq": e.seq}


def refusal_of(e, about: str) -> dict | None:
    d = e.details
    if e.integrity != "ok" or e.user != "system" or e.action != REFUSED_ACTION or not isinstance(d, dict):
        return None
    if d.get("node") != about or d.get("reason") not in REFUSAL_KINDS or type(d.get("size")) is not int:
        return None
    return {
        "reason": d["reason"],
        "size": d["size"],
        "cosigned_size": d.get("cosigned_size"),
        "ts": format_ts(e.ts),
        "detail": str(d.get("detail", ""))[:300],
    }


# -- the witness ---------------------------------------------------------------------


class Witness:
    """This node as the witness of its peers' logs."""

    def __init__(self, service):
        self.service = service
        self.name = witness_name(service.node_id)
        #: per log: the last tree cosigned (size, root), or None; absent until read from the log
        self._last: dict[str, tuple[int, bytes] | None] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: per log: the last refusal recorded by this process (recorded once)
        self._refused: dict[str, tuple] = {}

    def last_cosigned(self, node: str) -> tuple[int, bytes] | None:
        """The last tree of ``node`` this witness cosigned, from its own log."""
        from auditlog.query.filters import Filter
        from auditlog.query.scan import scan_node

        flt = Filter.from_params({"action": COSIGNED_ACTION, "target": node})
        for e in scan_node(self.service.log, flt, order="desc"):
            got = cosigned_of(e, node)
            if got is not None:
                return got["size"], got["root"]
        return None

    async def add_checkpoint(self, node: str, cert_der: bytes, body: bytes) -> str:
        """Cosign ``node``'s submitted checkpoint, or raise why not (recording the refusal
        when it is evidence).  The cosignature is returned once its record is durable."""
        old, proof, note = parse_submission(body)
        public_raw = signing_key_of(x509.load_der_x509_certificate(cert_der))
        if public_raw is None:
            raise WitnessForbidden(
                f"the certificate of {node} binds no signing key: nothing to check its checkpoints against "
                "(reissue it with auditlog cluster issue-cert --signing-key)"
            )
        vkey = Verifier.of(origin(node), public_raw)
        try:
            text, _ = open_note(note, [vkey])
            cp = Checkpoint.parse(text)
        except NoteError as e:
            raise WitnessForbidden(f"not a checkpoint signed by {node}'s key: {e}") from None
        if cp.origin != origin(node):
            raise WitnessForbidden(f"the checkpoint's origin is {cp.origin!r}, not {origin(node)!r}")
        svc = self.service
        async with self._locks.setdefault(node, asyncio.Lock()):
            if node not in self._last:
                self._last[node] = await svc.run(self.last_cosigned, node)
            last = self._last[node]
            refusal = judge(last, old, cp, proof)
            if refusal is not None:
                seen = (refusal.kind, cp.size, cp.root)
                if refusal.evidence and self._refused.get(node) != seen:
                    await svc.committer.append([refused_draft(node, cp, note, refusal, last)])
                    self._refused[node] = seen
                    log.warning("refused to cosign %s's checkpoint of %d entries: %s", node, cp.size, refusal.detail)
                raise WitnessRefused(refusal)
            line = cosign(text, self.name, svc.writer.signing_key, clock.now_us() // 1_000_000)
            if last is None or cp.size > last[0]:
                await svc.committer.append([cosigned_draft(node, cp, note, line, vkey)])
                self._last[node] = (cp.size, cp.root)
            return line


# -- what cluster verification finds ----------------------------------------------------


class ClusterFindings:
    """The violations of node ``node``'s log that one witness's records show: its
    refusals (one violation per kind, however many) and the check of the newest
    tree it cosigned against the node's own newest tree."""

    def __init__(self, node: str, witness: str):
        self.node = node
        self.witness = witness
        self._refusals: dict[str, dict] = {}

    def refusal(self, r: dict) -> None:
        got = self._refusals.get(r["reason"])
        if got is None:
            self._refusals[r["reason"]] = dict(r, count=1, first_ts=r["ts"], min_size=r["size"], max_size=r["size"])
            return
        got["count"] += 1
        got["ts"] = r["ts"]
        got["min_size"] = min(got["min_size"], r["size"])
        got["max_size"] = max(got["max_size"], r["size"])

    def violations(self) -> list[dict]:
        out = []
        for reason, r in sorted(self._refusals.items()):
            n = r["count"]
            when = r["first_ts"] if n == 1 else f"{r['first_ts']} .. {r['ts']}"
            sizes = str(r["min_size"]) if n == 1 else f"{r['min_size']}..{r['max_size']}"
            what = {"rollback": "a smaller tree", "inconsistent": "a tree that does not extend it"}.get(
                reason, "a second root for a cosigned size"
            )
            cosigned = r.get("cosigned_size") or 0
            out.append(
                self._v(
                    REFUSAL_KINDS[reason],
                    min(r["min_size"], cosigned) + 1 if reason == "rollback" else 1,
                    max(cosigned, r["max_size"]),
                    f"{self.witness} refused {n} checkpoint(s) of {sizes} entries ({when}): after cosigning "
                    f"{cosigned} entries it was shown {what} ({r['detail']})",
                )
            )
        return out

    def check_head(self, cosigned: dict, answer: dict) -> dict | None:
        """The newest tree the witness cosigned (``cosigned_of``) against the node's
        answer (``tree_answer``: its newest signed checkpoint and the consistency
        proof from the cosigned size); a violation, or None when they agree."""
        from auditlog.engine.merkle import verify_consistency

        m, when = cosigned["size"], cosigned["ts"]
        if "error" in answer:
            return self._v(
                "witness_mismatch",
                1,
                m,
                f"{self.witness} cosigned a tree of {m} entries at {when}, but the log's tree cannot answer: "
                f"{str(answer['error'])[:300]}",
            )
        try:
            text, _ = open_note(answer["checkpoint"], [cosigned["key"]])
            cp = Checkpoint.parse(text)
            proof = [bytes.fromhex(h) for h in answer["proof"]]
        except (NoteError, KeyError, TypeError, ValueError) as e:
            return self._v(
                "witness_mismatch",
                1,
                m,
                f"the node's newest checkpoint does not verify with the key {self.witness} cosigned under ({e})",
            )
        if cp.size < m:
            return self._v(
                "witness_truncated",
                cp.size + 1,
                m,
                f"{self.witness} cosigned a tree of {m} entries at {when}, but the log's tree has {cp.size}",
            )
        if not verify_consistency(m, cp.size, cosigned["root"], cp.root, proof):
            return self._v(
                "witness_mismatch",
                1,
                m,
                f"the log's tree of {cp.size} entries does not extend the tree of {m} entries {self.witness} "
                f"cosigned at {when} (history rewritten)",
            )
        return None

    def _v(self, kind: str, seq_from: int, seq_to: int, detail: str) -> dict:
        return {
            "kind": kind,
            "node": self.node,
            "seq_from": seq_from,
            "seq_to": seq_to,
            "segment": None,
            "detail": detail,
        }
