"""Evidence bundles of a 3-node cluster, verified with the cluster CA certificate alone.

Real ``auditlog serve`` nodes with real mTLS (``helpers_cluster``): a bundle from
``GET /api/v1/audit-log/export.bundle`` on one node holds every node's bundle,
each checkpoint cosigned by the other two, and every node's certificate.
``auditlog verify-bundle --ca ca.pem`` and the independent script
(``tests/bundle_verifier.py``, from FORMAT.md alone) accept it; single-byte
changes anywhere, another CA, a certificate that binds another key, missing
cosignatures and a node left out are all reported; a node that is down is named
in the bundle, not silently missing.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import tarfile
import time
from urllib.parse import urlencode

import pytest
from bundle_verifier import check_cluster
from helpers_cluster import LocalCluster, cli, make_events
from helpers_http import AUDITLOG, clean_env

from auditlog.export.bundle import canonical_tar
from auditlog.export.cluster_bundle import verify_cluster_bundle

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("cb"), ("a", "b", "c"), peer_timeout=3.0, checkpoint_interval=0.5)
    try:
        c.build()
        c.start()
        for i, name in enumerate("abc"):
            c[name].post_events(make_events(40 + 10 * i, name))
        # wait for each node to have been cosigned once by both peers (the rounds run)
        deadline = time.monotonic() + 30
        while True:
            rows = c["a"].get_ok("/api/v1/cluster")["nodes"]
            if all(len((r.get("last_checkpoint") or {}).get("cosigned_by", [])) == 2 for r in rows):
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.2)
        cli("cluster", "ca-init", "--out", str(c.root / "ca-wrong"))
        yield c
    finally:
        c.close()


def _bundle(server, **params) -> tuple[bytes, dict]:
    status, headers, body = server.request("/api/v1/audit-log/export.bundle?" + urlencode(params), timeout=300)
    assert status == 200, body[:300]
    return body, headers


def _verify_cli(tmp, data: bytes, *args: str) -> subprocess.CompletedProcess:
    path = tmp / f"b-{hashlib.sha256(data).hexdigest()[:12]}.bundle"
    path.write_bytes(data)
    return subprocess.run(
        [AUDITLOG, "verify-bundle", str(path), *args], capture_output=True, text=True, timeout=120, env=clean_env()
    )


def _members(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [(i.name, tf.extractfile(i).read()) for i in tf.getmembers()]


def test_cluster_bundle_verifies_with_the_ca_alone(cl, tmp_path):
    a = cl["a"]
    ca = cl.ca_dirs["main"] / "ca.pem"
    data, headers = _bundle(a)
    assert headers["X-Bundle-SHA256"] == hashlib.sha256(data).hexdigest()
    names = [n for n, _ in _members(data)]
    assert names == ["manifest.txt", "a.pem", "a.bundle", "b.pem", "b.bundle", "c.pem", "c.bundle"]
    p = _verify_cli(tmp_path, data, "--ca", str(ca))
    assert p.returncode == 0, p.stdout + p.stderr
    for n in "abc":
        peers = ", ".join(sorted(set("abc") - {n}))
        assert f"of node {n}, complete for its time range, under a checkpoint of" in p.stdout
        assert f"cosigned by {peers}" in p.stdout, p.stdout
    rep = json.loads(_verify_cli(tmp_path, data, "--ca", str(ca), "--json").stdout)
    assert rep["ok"] is True and rep["exporter"] == "a" and rep["unreachable"] == {}
    assert {n: r["cosigned_by"] for n, r in rep["nodes"].items()} == {
        "a": ["b", "c"],
        "b": ["a", "c"],
        "c": ["a", "b"],
    }
    assert rep["nodes"]["c"]["entries"] >= 60
    # the auditor's own script, from FORMAT.md alone
    assert check_cluster(data, ca.read_bytes(), min_cosigners=2) == []
    # the export is audited on the node asked, and each peer recorded the part it gave
    exports = a.get_ok("/api/v1/audit-log?" + urlencode({"node": "a", "action": "audit.export", "order": "desc"}))
    d = exports["events"][0]["details"]
    assert d["format"] == "bundle" and d["sha256"] == hashlib.sha256(data).hexdigest()
    assert d["nodes"] == {"a": "ok", "b": "ok", "c": "ok"} and d["rows"] >= 150
    for n in "bc":
        got = cl[n].get_ok(
            "/api/v1/audit-log?" + urlencode({"node": n, "action": "audit.export", "target": "a", "order": "desc"})
        )
        assert got["events"] and got["events"][0]["details"]["requested_by"] == "a"
    # no filter but time: each node's part claims completeness, and proves it; another
    # filter: authenticity and order only
    rep = verify_cluster_bundle(_bundle(cl["b"], **{"from": "2000-01-01"})[0], ca.read_bytes(), 2)
    assert rep.ok and rep.complete, rep.failures
    rep = verify_cluster_bundle(_bundle(cl["b"], action="auth.login")[0], ca.read_bytes(), 2)
    assert rep.ok and not rep.complete and {r["claim"] for r in rep.nodes.values()} == {"authentic"}
    # the wrong key form: a cluster bundle needs --ca, one node's bundle --key
    p = _verify_cli(tmp_path, data, "--key", str(cl["a"].data_dir / "node.pub"))
    assert p.returncode == 2 and "--ca" in p.stderr


def test_every_change_is_caught(cl, tmp_path):
    ca = (cl.ca_dirs["main"] / "ca.pem").read_bytes()
    data, _ = _bundle(cl["a"], node="b,c", action="auth.login")
    assert verify_cluster_bundle(data, ca, 2).ok
    rng = random.Random(7)
    # single bytes all over the file: the members, their headers, the padding
    for pos in sorted(rng.sample(range(len(data)), 300)):
        bad = bytearray(data)
        bad[pos] ^= 1 << rng.randrange(8)
        rep = verify_cluster_bundle(bytes(bad), ca, 2)
        assert not rep.ok, pos
        assert check_cluster(bytes(bad), ca, min_cosigners=2), pos
    # another CA, and a CA file that holds no certificate
    wrong = (cl.root / "ca-wrong" / "ca.pem").read_bytes()
    rep = verify_cluster_bundle(data, wrong, 2)
    assert not rep.ok and "not issued by the CA given" in rep.failures[0]
    p = _verify_cli(tmp_path, data, "--ca", str(cl.root / "ca-wrong" / "ca.pem"))
    assert p.returncode == 1 and "not issued by the CA given" in p.stdout
    assert not verify_cluster_bundle(data, b"not a pem", 2).ok


def _rebuild(data: bytes, change) -> bytes:
    members = dict(_members(data))
    change(members)
    return canonical_tar(list(members.items()))


def test_swapped_parts_certificates_and_missing_cosignatures_are_caught(cl, tmp_path):
    ca = (cl.ca_dirs["main"] / "ca.pem").read_bytes()
    data, _ = _bundle(cl["a"])
    # b's part put in c's place (the manifest re-signed is beyond an attacker without a's key;
    # even leaving the manifest alone, the digests catch it)
    swapped = _rebuild(data, lambda m: m.__setitem__("c.bundle", m["b.bundle"]))
    assert not verify_cluster_bundle(swapped, ca, 2).ok
    # a certificate of the CA for c that binds another key (a CA holder's forgery needs the CA key;
    # here: b's certificate presented as c's)
    swapped = _rebuild(data, lambda m: m.__setitem__("c.pem", m["b.pem"]))
    rep = verify_cluster_bundle(swapped, ca, 2)
    assert not rep.ok
    # a node left out whole: the manifest still names it
    dropped = _rebuild(data, lambda m: (m.pop("c.bundle"), m.pop("c.pem")))
    rep = verify_cluster_bundle(dropped, ca, 2)
    assert not rep.ok and "other members" in rep.failures[0]
    assert check_cluster(dropped, ca, min_cosigners=2)
    # asking for more cosigners than there are other nodes asks for all of them
    assert verify_cluster_bundle(data, ca, 5).ok


def test_a_node_down_is_named_not_hidden(cl, tmp_path):
    ca = cl.ca_dirs["main"] / "ca.pem"
    c = cl["c"]
    c.kill()
    try:
        data, _ = _bundle(cl["a"])
        names = [n for n, _ in _members(data)]
        assert "c.bundle" not in names and "c.pem" not in names
        p = _verify_cli(tmp_path, data, "--ca", str(ca))
        # what is there holds (cosigned by the node still up), and the report says c is missing
        assert p.returncode == 0, p.stdout
        assert "INCOMPLETE: node c gave no bundle at export" in p.stdout
        rep = verify_cluster_bundle(data, ca.read_bytes(), 1)
        assert rep.ok and not rep.complete and "c" in rep.unreachable
        assert {n: r["cosigned_by"] for n, r in rep.nodes.items()} == {"a": ["b"], "b": ["a"]}
        assert check_cluster(data, ca.read_bytes(), min_cosigners=1) == []
        # an auditor asking for two cosigners per checkpoint: c's absence shows
        rep = verify_cluster_bundle(data, ca.read_bytes(), 2)
        assert not rep.ok and all("cosigned by 1 of its peers, fewer than 2" in f for f in rep.failures)
        assert len(rep.failures) == 2 and check_cluster(data, ca.read_bytes(), min_cosigners=2)
        p = _verify_cli(tmp_path, data, "--ca", str(ca), "--min-cosigners", "2")
        assert p.returncode == 1 and "fewer than 2" in p.stdout
    finally:
        c.start()
        c.wait_ready()


def test_a_cluster_pdf_embeds_the_cluster_bundle(cl, tmp_path):
    from test_pdf_report import pdf_attachments, pdf_text, table_rows

    ca = cl.ca_dirs["main"] / "ca.pem"
    status, _, pdf = cl["b"].request(
        "/api/v1/audit-log/export.pdf?" + urlencode({"action": "auth.login", "bundle": "true"}), timeout=300
    )
    assert status == 200, pdf[:300]
    files = pdf_attachments(pdf, tmp_path)
    assert list(files) == ["auditlog-cluster-b.bundle"]
    data = files["auditlog-cluster-b.bundle"]
    text = " ".join(" ".join(pdf_text(pdf, tmp_path)).split())
    assert f"SHA-256 {hashlib.sha256(data).hexdigest()}" in text
    assert "verify-bundle auditlog-cluster-b.bundle --ca ca.pem" in text
    rep = verify_cluster_bundle(data, ca.read_bytes(), 2)
    assert rep.ok and set(rep.nodes) == {"a", "b", "c"}, rep.failures
    # the report's rows are the bundle's entries, every node's
    in_bundle = sum(r["entries"] for r in rep.nodes.values())
    assert in_bundle > 0 and len(table_rows(pdf_text(pdf, tmp_path))) == in_bundle
