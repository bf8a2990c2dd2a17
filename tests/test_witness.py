"""Witnesses that cosign (``engine.cosign``, ``query.cluster.witness``).

* the cosignature format of c2sp.org/tlog-cosignature (key ID, signed message,
  timestamped signature), checked byte by byte, and tampering refused;
* ``judge``, the witness's rule, over real trees and real consistency proofs of
  random sizes: an extension is cosigned, a stale old size is answered with the
  witness's size, a smaller tree (rollback), a second root for a size (split
  view) and a proof that does not hold are refused;
* the add-checkpoint body, with malformed and hostile submissions;
* ``ClusterFindings``: refusals fold into one violation per kind; the newest
  cosigned tree against the node's answer;
* end to end (real ``auditlog serve`` nodes, real mTLS): a node rolled back to an
  older copy of its data dir and run on is refused by its witnesses and reported
  by cluster verification; a split view handed to a witness (a second root for a
  size it cosigned, signed with the node's own key) is refused, recorded and
  reported; hostile submissions get a 4xx and leave the witness healthy.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import random
import shutil
import ssl
import struct
import time
from urllib.parse import urlencode

import pytest
from helpers_cluster import LocalCluster, make_events
from hypothesis import given, settings
from hypothesis import strategies as st

from auditlog.engine.cosign import COSIGNATURE_V1, Cosigner, cosign, cosignatures, cosigner_key_id, judge, witness_name
from auditlog.engine.merkle import CompactTree, consistency_proof, leaf_hash, node_hash
from auditlog.engine.note import Checkpoint, NoteError, Verifier, open_note, sign
from auditlog.engine.signing import SigningKey, load_signing_key
from auditlog.engine.tree import origin
from auditlog.query.cluster.witness import (
    MAX_PROOF_HASHES,
    MAX_SUBMISSION,
    ClusterFindings,
    parse_submission,
    submission,
)
from auditlog.query.errors import QueryError

KEY = SigningKey(bytes(range(32)))
OTHER = SigningKey(bytes(range(1, 33)))
TEXT = Checkpoint("auditlog/gw1", 5, hashlib.sha256(b"root").digest()).text()

# =====================================================================================
# the cosignature format
# =====================================================================================


def test_cosignature_bytes_follow_c2sp():
    name = witness_name("gw2")
    assert name == "auditlog/gw2/witness"
    line = cosign(TEXT, name, KEY, 1679315147)
    assert line.startswith(f"\u2014 {name} ") and line.endswith("\n")
    raw = base64.b64decode(line.split(" ")[2])
    # key ID: SHA-256(name || "\n" || 0x04 || public key)[:4]
    assert raw[:4] == hashlib.sha256(name.encode() + b"\n\x04" + KEY.public_raw).digest()[:4]
    assert raw[:4] == cosigner_key_id(name, KEY.public_raw) and COSIGNATURE_V1 == 4
    # a big-endian u64 time, then the Ed25519 signature of the header, time line and note text
    assert struct.unpack(">Q", raw[4:12]) == (1679315147,) and len(raw) == 4 + 8 + 64
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    Ed25519PublicKey.from_public_bytes(KEY.public_raw).verify(
        raw[12:], b"cosignature/v1\ntime 1679315147\n" + TEXT.encode()
    )


def test_cosigned_note_verifies_and_tampering_is_refused():
    note = sign(TEXT, "auditlog/gw1", OTHER) + cosign(TEXT, witness_name("gw2"), KEY, 1700000000)
    w = Cosigner(witness_name("gw2"), KEY.public_raw)
    assert cosignatures(note, [w]) == {w.name: 1700000000}
    # the log's own signature still verifies, the cosignature line is ignored by it
    assert open_note(note, [Verifier.of("auditlog/gw1", OTHER.public_raw)])[0] == TEXT
    # lines of keys not trusted are ignored; none trusted: nothing
    assert cosignatures(note, [Cosigner(witness_name("gw3"), OTHER.public_raw)]) == {}
    # another text under the same cosignature, another time, a flipped signature bit
    forged_text = note.replace("\n5\n", "\n6\n", 1)
    with pytest.raises(NoteError, match="does not verify"):
        cosignatures(forged_text, [w])
    line = note.splitlines()[-1]
    raw = bytearray(base64.b64decode(line.split(" ")[2]))
    for i in (11, 40):
        bad = bytearray(raw)
        bad[i] ^= 1
        forged = note.replace(line, line.rsplit(" ", 1)[0] + " " + base64.b64encode(bytes(bad)).decode())
        with pytest.raises(NoteError, match="does not verify"):
            cosignatures(forged, [w])
    short = note.replace(line, line.rsplit(" ", 1)[0] + " " + base64.b64encode(bytes(raw[:40])).decode())
    with pytest.raises(NoteError, match="not a time and an Ed25519 signature"):
        cosignatures(short, [w])
    with pytest.raises(NoteError):
        cosign(TEXT, witness_name("gw2"), KEY, -1)
    with pytest.raises(NoteError):
        cosign(TEXT, witness_name("gw2"), KEY, 1 << 63)


def test_the_key_never_shows():
    assert "SigningKey" in repr(KEY) and bytes(range(32)).hex() not in repr(KEY)


# =====================================================================================
# judge: the witness's rule over real trees
# =====================================================================================


def _tree(n: int, salt: bytes = b"") -> tuple[CompactTree, list[bytes]]:
    leaves = [leaf_hash(salt + i.to_bytes(8, "big")) for i in range(n)]
    t = CompactTree()
    for h in leaves:
        t.append(h)
    return t, leaves


def _getter(leaves: list[bytes]):
    def get(level: int, index: int) -> bytes:
        lo, hi = index << level, (index + 1) << level
        row = leaves[lo:hi]
        while len(row) > 1:
            row = [node_hash(row[i], row[i + 1]) for i in range(0, len(row), 2)]
        return row[0]

    return get


def _cp(t: CompactTree) -> Checkpoint:
    return Checkpoint("auditlog/b", t.size, t.root())


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.integers(0, 300))
def test_judge_cosigns_extensions_and_refuses_the_rest(m, extra):
    n = m + extra
    big, leaves = _tree(n)
    small, _ = _tree(m)
    last = (m, small.root())
    proof = consistency_proof(m, n, _getter(leaves)) if n > m else []
    assert judge(last, m, _cp(big), proof) is None
    # the first checkpoint a witness sees needs no proof
    assert judge(None, 0, _cp(big), []) is None
    # the log names another old size: the witness answers with its own
    r = judge(last, m + 1, _cp(big), proof)
    assert r.kind == "stale_old" and r.witnessed_size == m and not r.evidence
    # a smaller tree after a larger one
    if m > 1:
        smaller, _ = _tree(m - 1)
        r = judge(last, m, _cp(smaller), [])
        assert r.kind == "rollback" and r.evidence
    # a second root for the cosigned size
    other, other_leaves = _tree(m, salt=b"x")
    r = judge(last, m, _cp(other), [])
    assert r.kind == "split_view" and r.evidence
    # another history of the bigger size: its proof cannot lead from the cosigned root
    if n > m:
        forked, fleaves = _tree(n, salt=b"y")
        r = judge(last, m, _cp(forked), consistency_proof(m, n, _getter(fleaves)))
        assert r.kind == "inconsistent" and r.evidence
        # a proof cut short or with one hash changed
        assert judge(last, m, _cp(big), proof[:-1]).kind == "inconsistent"
        bad = list(proof)
        bad[random.Random(m * 7 + n).randrange(len(bad))] = hashlib.sha256(b"x").digest()
        assert judge(last, m, _cp(big), bad).kind == "inconsistent"
    else:
        assert judge(last, m, _cp(big), [hashlib.sha256(b"x").digest()]).kind == "inconsistent"


# =====================================================================================
# the add-checkpoint body
# =====================================================================================


def test_submission_round_trip_and_hostile_bodies():
    note = sign(TEXT, "auditlog/gw1", KEY)
    proof = [hashlib.sha256(bytes([i])).digest() for i in range(3)]
    assert parse_submission(submission(4, proof, note)) == (4, proof, note)
    assert parse_submission(submission(0, [], note)) == (0, [], note)
    good_line = base64.b64encode(proof[0]).decode()
    for body, needle in (
        (b"", "old <size>"),
        (b"old 4\n" + note.encode(), "base64 SHA-256"),  # no blank line: the note is read as the proof
        (b"old 04\n\n" + note.encode(), "old <size>"),
        (b"old -1\n\n" + note.encode(), "old <size>"),
        (b"old 99999999999999999999\n\n" + note.encode(), "old <size>"),
        (b"new 4\n\n" + note.encode(), "old <size>"),
        (b"old 4\nnot base64!\n\n" + note.encode(), "base64 SHA-256"),
        (b"old 4\n" + base64.b64encode(b"short").decode().encode() + b"\n\n" + note.encode(), "base64 SHA-256"),
        (b"old 4\n" + good_line.rstrip("=").encode() + b"\n\n" + note.encode(), "base64 SHA-256"),
        (b"old 4\n" + (good_line + "\n").encode() * (MAX_PROOF_HASHES + 1) + b"\n" + note.encode(), "at most"),
        (b"old 4\n\n\xff\xfe", "UTF-8"),
        (b"old 4\n\n" + b"x" * MAX_SUBMISSION, "at most"),
    ):
        with pytest.raises(QueryError, match=needle):
            parse_submission(body)


# =====================================================================================
# ClusterFindings
# =====================================================================================


def _answer(t: CompactTree, key: SigningKey, proof: list[bytes]) -> dict:
    note = sign(_cp(t).text(), "auditlog/b", key)
    return {"checkpoint": note, "proof": [h.hex() for h in proof]}


def test_findings_check_the_newest_cosigned_tree_against_the_node():
    small, _ = _tree(40)
    big, leaves = _tree(100)
    cosigned = {
        "size": 40,
        "root": small.root(),
        "key": Verifier.of("auditlog/b", KEY.public_raw),
        "ts": "2026-03-14T00:00:00.000000Z",
    }
    f = ClusterFindings("b", "a")
    assert f.check_head(cosigned, _answer(big, KEY, consistency_proof(40, 100, _getter(leaves)))) is None
    assert f.check_head(cosigned, _answer(small, KEY, [])) is None
    # rolled back: a smaller tree
    v = f.check_head(cosigned, _answer(_tree(30)[0], KEY, []))
    assert v["kind"] == "witness_truncated" and (v["seq_from"], v["seq_to"]) == (31, 40)
    # another history
    forked, fl = _tree(100, salt=b"z")
    v = f.check_head(cosigned, _answer(forked, KEY, consistency_proof(40, 100, _getter(fl))))
    assert v["kind"] == "witness_mismatch" and "history rewritten" in v["detail"] and v["seq_to"] == 40
    # signed by another key than the one the witness cosigned under
    v = f.check_head(cosigned, _answer(big, OTHER, consistency_proof(40, 100, _getter(leaves))))
    assert v["kind"] == "witness_mismatch" and "key" in v["detail"]
    # a node whose tree cannot answer says so, and that is a finding too
    v = f.check_head(cosigned, {"error": "the tree covers 40 entries but the log ends at seq 12"})
    assert v["kind"] == "witness_mismatch" and "cannot answer" in v["detail"]
    for junk in ({}, {"checkpoint": 5, "proof": []}, {"checkpoint": "x", "proof": ["zz"]}):
        assert f.check_head(cosigned, junk)["kind"] == "witness_mismatch"


def test_refusals_fold_into_one_finding_per_kind():
    f = ClusterFindings("b", "a")
    for i in range(5000):
        f.refusal({"reason": "rollback", "size": 10 + i, "cosigned_size": 9000, "ts": f"t{i}", "detail": "smaller"})
    f.refusal({"reason": "split_view", "size": 9000, "cosigned_size": 9000, "ts": "t", "detail": "two roots"})
    found = f.violations()
    assert [v["kind"] for v in found] == ["witness_truncated", "witness_split_view"]
    assert found[0]["seq_from"] == 11 and found[0]["seq_to"] == 9000 and "5000 checkpoint(s)" in found[0]["detail"]
    assert found[0]["detail"].startswith("a refused")


# =====================================================================================
# end to end
# =====================================================================================

PEER_TIMEOUT = 3.0


def _q(path: str, **params) -> str:
    return path + "?" + urlencode(params)


def _records(node, about: str, action: str) -> list[dict]:
    page = node.get_ok(_q("/api/v1/audit-log", node=node.name, action=action, target=about, limit=10000))
    return [e["details"] for e in page["events"]]


def _wait(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        time.sleep(0.2)


@pytest.mark.e2e
def test_rolled_back_node_is_refused_and_reported(tmp_path):
    cl = LocalCluster(tmp_path / "cl", ("a", "b", "c"), peer_timeout=PEER_TIMEOUT, checkpoint_interval=0.2)
    try:
        cl.build()
        cl.start()
        a, b, c = cl["a"], cl["b"], cl["c"]
        b.post_events(make_events(50, "before-copy"))
        # an older copy of b's data dir (a backup, taken while b is stopped)
        assert b.stop() == 0
        copy = tmp_path / "b-copy"
        shutil.copytree(b.data_dir, copy)
        b.start()
        b.wait_ready()
        last = int(b.post_events(make_events(50, "after-copy"))["last_id"].split(":")[1])
        for w in (a, c):
            _wait(lambda w=w: any(d["size"] >= last for d in _records(w, "b", "audit.checkpoint")), 30, "cosigned")
        for viewer in (a, b, c):
            rep = viewer.get_ok("/api/v1/verify?scope=cluster")
            assert rep["ok"] is True and rep["violations"] == [], rep

        # roll b back to the copy; it runs on, taking new events
        assert b.stop() == 0
        held = {w.name: len(_records(w, "b", "audit.checkpoint")) for w in (a, c)}  # all of the real b
        shutil.rmtree(b.data_dir)
        shutil.copytree(copy, b.data_dir)
        b.start()
        b.wait_ready()
        b.post_events(make_events(200, "other-history"))
        # b alone cannot tell: its chain is intact, only another history
        own = b.get_ok("/api/v1/verify")
        assert own["ok"] is True and own["violations"] == [], own
        for w in (a, c):
            refused = _wait(lambda w=w: _records(w, "b", "audit.checkpoint_refused"), 30, f"{w.name} refuses")
            assert {d["reason"] for d in refused} <= {"rollback", "inconsistent"}
            assert all(d["cosigned_size"] >= last for d in refused)
            # nothing of the other history is cosigned: no record of b since the rollback
            assert len(_records(w, "b", "audit.checkpoint")) == held[w.name]
        # once it grew past the cosigned size, the refusal is an inconsistent tree
        _wait(
            lambda: all(
                any(d["reason"] == "inconsistent" for d in _records(w, "b", "audit.checkpoint_refused")) for w in (a, c)
            ),
            30,
            "inconsistent trees refused",
        )
        assert {w.name: len(_records(w, "b", "audit.checkpoint")) for w in (a, c)} == held

        # the witnesses record a refusal before they answer, and b takes its round's answers
        # in only once all have come: its status is polled, not read once
        def b_row():
            row = next(r for r in b.get_ok("/api/v1/cluster")["nodes"] if r["node"] == "b")
            return row if row["last_checkpoint"] is not None else None

        st_b = _wait(b_row, 30, "b finished a round after its restart")
        assert st_b["last_checkpoint"]["cosigned_by"] == [], st_b
        for viewer in (a, c):
            rep = viewer.get_ok("/api/v1/verify?scope=cluster")
            assert rep["ok"] is False
            assert all(st["status"] == "ok" for st in rep["nodes"].values()), rep["nodes"]
            assert rep["nodes"]["b"]["ok"] is False
            assert rep["nodes"]["a"]["ok"] is True and rep["nodes"]["c"]["ok"] is True
            found = rep["violations"]
            assert found and all(v["node"] == "b" for v in found), found
            assert {v["kind"] for v in found} <= {"witness_mismatch", "witness_truncated"}
            for w in "ac":
                assert any(v["detail"].startswith(f"{w} refused") for v in found), (w, found)
            # a few findings per witness, however many refusals
            assert len(found) <= 6, found
    finally:
        cl.close()


def _peer_post(cl, node, to, path: str, body: bytes) -> tuple[int, bytes]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(cl.ca_dirs["main"] / "ca.pem"))
    ctx.load_cert_chain(str(node.cert), str(node.key))
    conn = http.client.HTTPSConnection("127.0.0.1", to.peer_port, timeout=10, context=ctx)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "text/plain"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.mark.e2e
def test_split_view_is_refused_recorded_and_reported(tmp_path):
    # a and b, cosigning each other; the test holds b's key (its data dir) and its
    # certificate, as an attacker on b would, and shows a a second tree of a size it
    # cosigned
    cl = LocalCluster(tmp_path / "cl", ("a", "b"), peer_timeout=PEER_TIMEOUT, checkpoint_interval=0.2)
    try:
        cl.build()
        cl.start()
        a, b = cl["a"], cl["b"]
        b.post_events(make_events(30, "x"))
        cos = _wait(lambda: _records(a, "b", "audit.checkpoint"), 30, "a cosigns b")
        m = cos[-1]["size"]
        key = load_signing_key(b.data_dir / "node.sign")

        def submit(size: int, root: bytes, old: int, proof=()) -> tuple[int, dict | str]:
            note = sign(Checkpoint(origin("b"), size, root).text(), origin("b"), key)
            status, raw = _peer_post(cl, b, a, "/peer/v1/add-checkpoint", submission(old, list(proof), note))
            try:
                return status, json.loads(raw)
            except ValueError:
                return status, raw.decode()

        assert b.stop() == 0  # b's own rounds would move a on meanwhile
        status, ans = submit(m, hashlib.sha256(b"another history").digest(), m)
        assert status == 409 and ans["kind"] == "split_view" and ans["cosigned_size"] == m, ans
        # an old size that is not a's: 409 with a's size, nothing recorded
        status, ans = submit(m + 5, hashlib.sha256(b"y").digest(), m - 1)
        assert status == 409 and ans["kind"] == "stale_old" and ans["cosigned_size"] == m, ans
        # a smaller tree
        status, ans = submit(m - 1, hashlib.sha256(b"z").digest(), m)
        assert status == 400 and ans["kind"] == "rollback", ans
        # a bigger tree without a proof that holds
        status, ans = submit(m + 10, hashlib.sha256(b"w").digest(), m, [hashlib.sha256(b"p").digest()])
        assert status == 422 and ans["kind"] == "inconsistent", ans
        # a checkpoint not signed by b's key, or of another origin: 403
        note = sign(Checkpoint(origin("b"), m + 1, bytes(32)).text(), origin("b"), KEY)
        status, _ = _peer_post(cl, b, a, "/peer/v1/add-checkpoint", submission(m, [], note))
        assert status == 403
        note = sign(Checkpoint(origin("a"), m + 1, bytes(32)).text(), origin("a"), key)
        status, _ = _peer_post(cl, b, a, "/peer/v1/add-checkpoint", submission(m, [], note))
        assert status == 403
        for body in (b"", b"old x\n\nnote", b"old 1\n\n" + b"x" * (MAX_SUBMISSION + 10), b"\xff" * 100):
            status, _ = _peer_post(cl, b, a, "/peer/v1/add-checkpoint", body)
            assert status in (400, 413), (body[:20], status)

        refused = _records(a, "b", "audit.checkpoint_refused")
        assert [d["reason"] for d in refused] == ["split_view", "rollback", "inconsistent"], refused
        assert all(d["cosigned_size"] == m for d in refused)
        # a's state is unmoved: the last tree it cosigned is still b's real one
        assert _records(a, "b", "audit.checkpoint")[-1]["size"] == m
        b.start()
        b.wait_ready()
        rep = a.get_ok("/api/v1/verify?scope=cluster")
        assert rep["ok"] is False
        kinds = {v["kind"] for v in rep["violations"]}
        assert kinds == {"witness_split_view", "witness_truncated", "witness_mismatch"}, rep["violations"]
        split = next(v for v in rep["violations"] if v["kind"] == "witness_split_view")
        assert split["node"] == "b" and split["detail"].startswith("a refused") and split["seq_to"] == m
        # b's real log goes on being cosigned
        _wait(lambda: _records(a, "b", "audit.checkpoint")[-1]["size"] > m, 30, "cosigning goes on")
        assert a.get_ok("/healthz")["status"] == "ok"  # the witness is healthy after all of it
    finally:
        cl.close()


@pytest.mark.e2e
def test_an_idle_cluster_falls_quiet(tmp_path):
    # checkpoints and witness records need no checkpoint of their own: once nothing else
    # is written, the nodes stop appending, and the last checkpoint stays cosigned
    cl = LocalCluster(tmp_path / "cl", ("a", "b"), peer_timeout=PEER_TIMEOUT, checkpoint_interval=0.2)
    try:
        cl.build()
        cl.start()
        a, b = cl["a"], cl["b"]
        b.post_events(make_events(20, "x"))

        def heads() -> dict[str, int]:
            # read from the data dirs by the CLI: a keyed HTTP read would record its key's use
            return {n.name: _head(n) for n in (a, b)}

        def settled():
            first = heads()
            time.sleep(2.0)  # ten rounds
            return first == heads() and first

        quiet = _wait(settled, 40, "the cluster falls quiet")
        assert quiet["b"] > 20
        for n, peer in ((a, "b"), (b, "a")):
            row = next(r for r in n.get_ok("/api/v1/cluster")["nodes"] if r["node"] == n.name)
            assert row["last_checkpoint"]["cosigned_by"] == [peer], row
    finally:
        cl.close()


def _head(node) -> int:
    """The node's newest seq, read from its data dir's segments by the CLI (no HTTP key use)."""
    out = node.run("query", "--node", node.name, "--order", "desc", "--limit", "1", "--format", "ndjson").stdout
    return json.loads(out.splitlines()[0])["seq"]
