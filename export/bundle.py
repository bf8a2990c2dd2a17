"""Evidence bundles: entries with the proofs that let an auditor check them with
nothing but the node's public key (FORMAT.md section 15).

A bundle is one tar file (ustar, written the one canonical way: mode 0644, owner
0, time 0, no names but the members') holding, in this order:

``manifest.txt``
    a signed note (the node's Ed25519 key): what the bundle holds and claims,
    and the SHA-256 of every other member;
``checkpoint.txt``
    the signed checkpoint the proofs rest on (an ``audit.tree_head`` the node
    recorded for the export);
``node.pub``
    the node's public key (PEM), for reference: the auditor brings their own;
``entries.ndjson``
    the matching entries, one wire-shaped JSON object per line, in seq order;
``proofs.ndjson``
    one range proof (``engine.merkle.range_proof``) per run of consecutive seqs
    among the entries and the boundaries: O(log n) hashes for a whole time range;
``boundaries.ndjson``
    for a bundle filtered by time only: the entries just outside the range, which
    show that no entry of the range is missing.

:func:`verify_bundle` checks all of it; a bundle whose bytes are not exactly the
canonical tar of its members is refused, so no byte anywhere in the file goes
unchecked.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field

from auditlog.engine.entry import canonical_bytes
from auditlog.engine.errors import AuditLogError
from auditlog.engine.merkle import leaf_hash, range_proof, verify_range
from auditlog.engine.note import Checkpoint, NoteError, Verifier, open_note, parse, sign
from auditlog.engine.signing import public_pem
from auditlog.engine.tree import origin

BUNDLE_VERSION = 1
MEMBERS = ("manifest.txt", "checkpoint.txt", "node.pub", "entries.ndjson", "proofs.ndjson", "boundaries.ndjson")
TITLE = f"auditlog evidence bundle v{BUNDLE_VERSION}"
CLAIM_COMPLETE = "complete"
CLAIM_AUTHENTIC = "authentic"
#: a bundle larger than this is not read
MAX_BUNDLE_BYTES = 4 * 1024**3


class BundleError(AuditLogError):
    """A bundle that cannot be written."""


def canonical_tar(members: list[tuple[str, bytes]]) -> bytes:
    """The one tar of these members a bundle may be."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = len(data), 0, 0o644, 0, 0, "", ""
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def parse_ts(text: str) -> int:
    """µs since the epoch from the wire form ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (exactly)."""
    if type(text) is not str or len(text) != 27 or text[-1] != "Z" or text[19] != ".":
        raise ValueError(f"not a wire timestamp: {text!r}")
    d = _dt.datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")
    micros = text[20:26]
    if not micros.isdigit():
        raise ValueError(f"not a wire timestamp: {text!r}")
    secs = (d - _dt.datetime(1970, 1, 1)).days * 86400 + d.hour * 3600 + d.minute * 60 + d.second
    return secs * 1_000_000 + int(micros)


def wire_leaf(e: dict) -> bytes:
    """The leaf data of an entry in its wire shape (FORMAT.md sections 5.1 and 14)."""
    draft = (e["user"], e["action"], e["target"], e["domain"], e["ip"], e["user_agent"], e["success"], e["details"])
    sig = bytes.fromhex(e["signature"])
    if len(sig) != 32:
        raise ValueError("a signature is 32 bytes")
    return canonical_bytes(e["node"], e["seq"], parse_ts(e["ts"]), draft) + sig


def _runs(seqs: list[int]) -> list[tuple[int, int]]:
    """Runs of consecutive seqs: ``(first, last)`` each."""
    out: list[tuple[int, int]] = []
    for q in seqs:
        if out and q == out[-1][1] + 1:
            out[-1] = (out[-1][0], q)
        else:
            out.append((q, q))
    return out


def _lines(items: list[dict]) -> bytes:
    return b"".join(json.dumps(i, ensure_ascii=False, separators=(",", ":")).encode() + b"\n" for i in items)


def write_bundle(
    node_id: str,
    signing_key,
    checkpoint_note: str,
    entries: list[bytes],
    tree,
    *,
    filters: dict,
    time_only: bool,
    window: tuple[int | None, int | None],
    boundaries: list[tuple[str, dict]],
) -> bytes:
    """The bundle of ``entries`` (their wire-shaped JSON lines, each ending in a newline,
    seq order, all within the checkpoint) with
    inclusion proofs from ``tree`` (an ``engine.tree.LogTree``) against the checkpoint
    ``checkpoint_note``; ``boundaries`` are the entries just outside a time window, as
    ``("before" | "after", wire dict)``."""
    cp = Checkpoint.parse(parse(checkpoint_note)[0])
    get = tree.getter(cp.size)
    entry_seqs = [json.loads(line)["seq"] for line in entries]
    every = sorted(entry_seqs + [b["seq"] for _, b in boundaries])
    if every and not 1 <= every[0] <= every[-1] <= cp.size:
        raise BundleError(f"an entry is not under the checkpoint of {cp.size} entries")
    proofs = []
    for first, last in _runs(every):
        proof = range_proof(first - 1, last, cp.size, get)
        proofs.append({"first_seq": first, "last_seq": last, "proof": [h.hex() for h in proof]})
    n = len(entries)
    bounds = [{"side": side, "entry": b} for side, b in boundaries]
    members = {
        "checkpoint.txt": checkpoint_note.encode(),
        "node.pub": public_pem(signing_key.public_raw),
        "entries.ndjson": b"".join(entries),
        "proofs.ndjson": _lines(proofs),
        "boundaries.ndjson": _lines(bounds),
    }
    lo, hi = window
    fmt = _dt.datetime.fromtimestamp
    seqs = f"seqs {entry_seqs[0]}..{entry_seqs[-1]}" if entry_seqs else "none"
    lines = [
        TITLE,
        f"node: {node_id}",
        f"origin: {origin(node_id)}",
        f"checkpoint: size {cp.size}, root {base64.b64encode(cp.root).decode()}",
        "filters: " + (json.dumps(filters, sort_keys=True, separators=(",", ":")) if filters else "{}"),
        f"entries: {n} ({seqs})",
        f"claim: {CLAIM_COMPLETE if time_only else CLAIM_AUTHENTIC}",
        "window: "
        + json.dumps([lo, hi])
        + (f" ({fmt(lo / 1e6, _dt.UTC):%Y-%m-%dT%H:%M:%S}Z .. " if lo is not None else " (start .. ")
        + (f"{fmt(hi / 1e6, _dt.UTC):%Y-%m-%dT%H:%M:%S}Z)" if hi is not None else "end)"),
        (
            "meaning: every entry of the node with a timestamp in the window and a seq under the checkpoint is here"
            if time_only
            else "meaning: these entries are authentic and in this order; other entries may match the filters too"
        ),
    ]
    lines += [f"sha256 {name} {hashlib.sha256(members[name]).hexdigest()}" for name in MEMBERS[1:]]
    manifest = sign("\n".join(lines) + "\n", origin(node_id), signing_key)
    return canonical_tar([("manifest.txt", manifest.encode()), *((name, members[name]) for name in MEMBERS[1:])])


# -- verifying --------------------------------------------------------------------------


@dataclass
class BundleReport:
    ok: bool = False
    node: str | None = None
    checkpoint_size: int | None = None
    entries: int = 0
    claim: str | None = None
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "node": self.node,
            "checkpoint_size": self.checkpoint_size,
            "entries": self.entries,
            "claim": self.claim,
            "failures": self.failures,
        }


def _json_lines(raw: bytes, what: str) -> list:
    try:
        return [json.loads(line) for line in raw.decode("utf-8").splitlines()]
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{what} is not JSON lines ({e})") from None


def verify_bundle(data: bytes, public_raw: bytes) -> BundleReport:
    """Check a bundle against the node's public key; what holds and what fails."""
    r = BundleReport()
    try:
        _verify(data, public_raw, r)
    except (ValueError, KeyError, TypeError, IndexError, NoteError, tarfile.TarError) as e:
        r.failures.append(str(e) or type(e).__name__)
    r.ok = not r.failures
    return r


def _verify(data: bytes, public_raw: bytes, r: BundleReport) -> None:
    if len(data) > MAX_BUNDLE_BYTES:
        raise ValueError("the bundle is too large to be one")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        infos = tf.getmembers()
        if [i.name for i in infos] != list(MEMBERS) or not all(i.isreg() for i in infos):
            raise ValueError(f"a bundle holds exactly {', '.join(MEMBERS)}, in that order")
        members = {i.name: tf.extractfile(i).read() for i in infos}
    if canonical_tar([(n, members[n]) for n in MEMBERS]) != data:
        raise ValueError("the bundle is not the canonical tar of its members (bytes outside them were changed)")
    # the manifest, signed by the node's key
    _, sigs = parse(members["manifest.txt"])
    name = sigs[0].name
    trusted = Verifier.of(name, public_raw)
    text, _ = open_note(members["manifest.txt"], [trusted])
    lines = text[:-1].split("\n")
    if lines[0] != TITLE:
        raise ValueError(f"not an {TITLE}")
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    r.node = fields["node"]
    if fields["origin"] != origin(r.node) or name != origin(r.node):
        raise ValueError("the manifest's origin is not the node's")
    digests = {ln.split(" ")[1]: ln.split(" ")[2] for ln in lines if ln.startswith("sha256 ")}
    for m in MEMBERS[1:]:
        if digests.get(m) != hashlib.sha256(members[m]).hexdigest():
            raise ValueError(f"{m} is not the one the manifest names")
    # the checkpoint, signed by the same key
    cp = Checkpoint.parse(open_note(members["checkpoint.txt"], [trusted])[0])
    r.checkpoint_size = cp.size
    if (
        cp.origin != origin(r.node)
        or fields["checkpoint"] != f"size {cp.size}, root {base64.b64encode(cp.root).decode()}"
    ):
        raise ValueError("the manifest and the checkpoint disagree")
    proofs = _json_lines(members["proofs.ndjson"], "proofs.ndjson")
    bounds = _json_lines(members["boundaries.ndjson"], "boundaries.ndjson")
    r.claim = fields["claim"]
    leaves: dict[int, bytes] = {}

    def take(e: dict) -> None:
        if e["node"] != r.node or e["seq"] in leaves:
            r.failures.append(f"entry {e.get('seq')}: not the node's, or there twice")
            return
        leaves[e["seq"]] = leaf_hash(wire_leaf(e))

    seqs: list[int] = []
    stamps: list[int] = []
    for line in members["entries.ndjson"].decode("utf-8").splitlines():
        e = json.loads(line)  # one at a time: a bundle's entries are not all held as objects
        take(e)
        seqs.append(e["seq"])
        stamps.append(parse_ts(e["ts"]))
    r.entries = len(seqs)
    for b in bounds:
        take(b["entry"])
    covered: set[int] = set()
    for p in proofs:
        first, last = p["first_seq"], p["last_seq"]
        if type(first) is not int or type(last) is not int or not 0 < first <= last < first + len(leaves):
            r.failures.append("a proof names a run of seqs the bundle does not hold")
            continue
        run = range(first, last + 1)
        if covered.intersection(run) or any(q not in leaves for q in run):
            r.failures.append(f"the proof of seqs {first}..{last} is not for entries of the bundle")
            continue
        covered.update(run)
        proof = [bytes.fromhex(h) for h in p["proof"]]
        if not verify_range([leaves[q] for q in run], first - 1, cp.size, proof, cp.root):
            r.failures.append(f"seqs {first}..{last}: their proof does not verify against the checkpoint")
    if covered != set(leaves):
        r.failures.append(f"{len(set(leaves) - covered)} entries have no proof")
    if seqs != sorted(set(seqs)):
        r.failures.append("the entries are not in seq order, each once")
    if r.claim == CLAIM_COMPLETE:
        _check_complete(seqs, stamps, bounds, json.loads(fields["window"].split(" (", 1)[0]), cp.size, r)
    elif r.claim != CLAIM_AUTHENTIC:
        raise ValueError(f"unknown claim {r.claim!r}")


def _check_complete(
    seqs: list[int], stamps: list[int], bounds: list[dict], window: list, size: int, r: BundleReport
) -> None:
    """Every entry with ts in the window (and seq ≤ size) is in the bundle: the entries
    are consecutive seqs, and the ones just outside lie outside the window (a node's
    timestamps never go back)."""
    lo, hi = window
    if any((lo is not None and t < lo) or (hi is not None and t >= hi) for t in stamps):
        r.failures.append("an entry lies outside the bundle's time window")
    if seqs and seqs != list(range(seqs[0], seqs[-1] + 1)):
        r.failures.append("entries are missing between the first and the last (seqs not consecutive)")
    before = [b["entry"] for b in bounds if b.get("side") == "before"]
    after = [b["entry"] for b in bounds if b.get("side") == "after"]
    first = seqs[0] if seqs else (after[0]["seq"] if after else size + 1)
    last = seqs[-1] if seqs else first - 1
    if first > 1:
        if not before or before[0]["seq"] != first - 1 or lo is None or parse_ts(before[0]["ts"]) >= lo:
            r.failures.append(f"nothing shows that the entries before seq {first} lie before the window")
    if last < size:
        if not after or after[0]["seq"] != last + 1 or hi is None or parse_ts(after[0]["ts"]) < hi:
            r.failures.append(f"nothing shows that the entries after seq {last} lie after the window")
