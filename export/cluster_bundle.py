"""Cluster evidence bundles: one node's bundle per node, and the certificates that
let an auditor holding only the cluster CA certificate trust every node's key
(FORMAT.md section 15.1).

A cluster bundle is a canonical tar (as a node's bundle is) holding, in order:

``manifest.txt``
    a signed note of the exporting node: the filters, and per node the SHA-256
    of its certificate and its bundle, or why it has none (unreachable);
``<node>.pem``, ``<node>.bundle``
    for every node in node-id order: its cluster certificate (which binds its
    node id to its signing key) and its bundle (section 15), whose checkpoint
    carries the cosignatures of its peers.

:func:`verify_cluster_bundle` checks each certificate under the CA, each node's
bundle under the key its certificate binds, and each checkpoint's cosignatures
under the keys of the other nodes' certificates.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from auditlog.engine.cosign import Cosigner, cosignatures, witness_name
from auditlog.engine.datadir import check_node_id
from auditlog.engine.errors import AuditLogError
from auditlog.engine.note import NoteError, Verifier, open_note, sign
from auditlog.engine.tree import origin
from auditlog.export.bundle import MAX_BUNDLE_BYTES, BundleReport, canonical_tar, verify_bundle

CLUSTER_TITLE = "auditlog cluster evidence bundle v1"


class ClusterBundleError(AuditLogError):
    """A cluster bundle that cannot be written."""


def is_cluster_bundle(data: bytes) -> bool:
    """Whether ``data`` looks like a cluster bundle (its manifest says so); verifying it
    is :func:`verify_cluster_bundle`'s job."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data[: 64 * 1024]), mode="r:") as tf:
            first = tf.next()
            if first is None or first.name != "manifest.txt":
                return False
            return tf.extractfile(first).read(len(CLUSTER_TITLE)).decode() == CLUSTER_TITLE
    except (tarfile.TarError, UnicodeDecodeError, OSError, AttributeError):
        return False


def part_summary(part: bytes) -> dict:
    """What a node's bundle says of itself (entries, claim, checkpoint), read from its
    manifest without checking it: for the exporting node's own record."""
    try:
        text = _members(part)[0][1].decode("utf-8")
    except (ValueError, IndexError, tarfile.TarError, UnicodeDecodeError):
        return {}
    fields = dict(ln.split(": ", 1) for ln in text.split("\n") if ": " in ln and not ln.startswith("\u2014"))
    out: dict = {"claim": fields.get("claim"), "checkpoint": fields.get("checkpoint")}
    for key, text_value in (("entries", fields.get("entries", "")), ("checkpoint_size", out["checkpoint"] or "")):
        word = text_value.removeprefix("size ").split(" ", 1)[0].rstrip(",")
        if word.isdigit():
            out[key] = int(word)
    return out


def write_cluster_bundle(
    exporter: str,
    signing_key,
    filters: dict,
    parts: dict[str, bytes],
    certs: dict[str, bytes],
    unreachable: dict[str, str],
) -> bytes:
    """The cluster bundle of the nodes' ``parts`` (their bundles) and ``certs`` (PEM),
    signed by ``exporter``; ``unreachable`` names the nodes that gave no bundle and why."""
    if exporter not in certs or not set(parts) <= set(certs):
        raise ClusterBundleError("every node with a bundle, and the exporting node, needs its certificate")
    lines = [
        CLUSTER_TITLE,
        f"exporter: {exporter}",
        "filters: " + (json.dumps(filters, sort_keys=True, separators=(",", ":")) if filters else "{}"),
    ]
    members: list[tuple[str, bytes]] = []
    for node in sorted(certs):
        members.append((f"{node}.pem", certs[node]))
        lines.append(f"sha256 {node}.pem {hashlib.sha256(certs[node]).hexdigest()}")
        if node in parts:
            members.append((f"{node}.bundle", parts[node]))
            lines.append(f"sha256 {node}.bundle {hashlib.sha256(parts[node]).hexdigest()}")
    for node in sorted(unreachable):
        why = " ".join(str(unreachable[node]).split())[:300]
        lines.append(f"unreachable {node}: {why}")
    manifest = sign("\n".join(lines) + "\n", origin(exporter), signing_key)
    return canonical_tar([("manifest.txt", manifest.encode()), *members])


# -- verifying --------------------------------------------------------------------------


@dataclass
class ClusterBundleReport:
    ok: bool = False
    exporter: str | None = None
    nodes: dict[str, dict] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every node gave its bundle and each claims completeness for its time range."""
        return self.ok and not self.unreachable and all(n.get("claim") == "complete" for n in self.nodes.values())

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "complete": self.complete,
            "exporter": self.exporter,
            "nodes": self.nodes,
            "unreachable": self.unreachable,
            "failures": self.failures,
        }


def load_ca(pem: bytes) -> list[x509.Certificate]:
    try:
        cas = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ValueError("the CA file holds no PEM certificate") from None
    return cas


def node_key(cert_pem: bytes, node: str, cas: list[x509.Certificate]) -> bytes:
    """The signing key the certificate binds to ``node``, once it verifies under one of
    ``cas``; ValueError naming what does not hold."""
    from auditlog.engine.identity import node_id_of, signing_key_of

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ValueError(f"{node}.pem is not a PEM certificate") from None
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            break
        except (ValueError, TypeError, InvalidSignature):
            continue
    else:
        raise ValueError(f"the certificate of {node} was not issued by the CA given")
    from cryptography.hazmat.primitives.serialization import Encoding

    named = node_id_of(cert.public_bytes(Encoding.DER))
    if named != node:
        raise ValueError(f"{node}.pem is the certificate of {named!r}, not of {node!r}")
    try:
        key = signing_key_of(cert)
    except AuditLogError as e:
        raise ValueError(f"the certificate of {node}: {e}") from None
    if key is None:
        raise ValueError(f"the certificate of {node} binds no signing key")
    return key


def _members(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        infos = tf.getmembers()
        if not all(i.isreg() for i in infos):
            raise ValueError("a bundle holds regular files only")
        return [(i.name, tf.extractfile(i).read()) for i in infos]


def _checkpoint_note(part: bytes) -> bytes:
    for name, body in _members(part):
        if name == "checkpoint.txt":
            return body
    raise ValueError("a node's bundle without checkpoint.txt")


def verify_cluster_bundle(data: bytes, ca_pem: bytes, min_cosigners: int = 1) -> ClusterBundleReport:
    """Check a cluster bundle with nothing but the cluster CA certificate(s)."""
    r = ClusterBundleReport()
    try:
        _verify(data, load_ca(ca_pem), min_cosigners, r)
    except (ValueError, KeyError, TypeError, IndexError, NoteError, tarfile.TarError) as e:
        r.failures.append(str(e) or type(e).__name__)
    r.ok = not r.failures
    return r


def _verify(data: bytes, cas: list, min_cosigners: int, r: ClusterBundleReport) -> None:
    if len(data) > MAX_BUNDLE_BYTES:
        raise ValueError("the bundle is too large to be one")
    members = _members(data)
    if canonical_tar(members) != data:
        raise ValueError("the bundle is not the canonical tar of its members (bytes outside them were changed)")
    if not members or members[0][0] != "manifest.txt":
        raise ValueError("a cluster bundle starts with manifest.txt")
    certs: dict[str, bytes] = {}
    parts: dict[str, bytes] = {}
    order = []
    for name, body in members[1:]:
        node, _, kind = name.rpartition(".")
        check_node_id(node)
        if kind == "pem" and node not in certs and node not in parts:
            certs[node] = body
        elif kind == "bundle" and node in certs and node not in parts and order and order[-1] == node:
            parts[node] = body
        else:
            raise ValueError(f"member {name!r} out of place: each node's .pem, then its .bundle, in node order")
        if kind == "pem":
            order.append(node)
    if order != sorted(order):
        raise ValueError("the nodes are not in node-id order")
    keys = {n: node_key(pem, n, cas) for n, pem in certs.items()}
    # the manifest, signed by the exporting node
    manifest = members[0][1]
    text = manifest.decode("utf-8")
    lines = text.split("\n")
    if lines[0] != CLUSTER_TITLE:
        raise ValueError(f"not an {CLUSTER_TITLE}")
    fields = dict(ln.split(": ", 1) for ln in lines[1:4] if ": " in ln)
    r.exporter = fields.get("exporter")
    if r.exporter not in keys:
        raise ValueError("the exporting node's certificate is not in the bundle")
    text, _ = open_note(manifest, [Verifier.of(origin(r.exporter), keys[r.exporter])])
    lines = text[:-1].split("\n")
    digests = {ln.split(" ")[1]: ln.split(" ")[2] for ln in lines if ln.startswith("sha256 ")}
    named = [n for n, _ in members[1:]]
    if sorted(digests) != sorted(named):
        raise ValueError("the manifest names other members than the bundle holds")
    for name, body in members[1:]:
        if digests[name] != hashlib.sha256(body).hexdigest():
            raise ValueError(f"{name} is not the one the manifest names")
    for ln in lines:
        if ln.startswith("unreachable "):
            node, _, why = ln[len("unreachable ") :].partition(": ")
            r.unreachable[node] = why
    # each node's bundle under its key, its checkpoint cosigned by the others
    for node, part in parts.items():
        rep: BundleReport = verify_bundle(part, keys[node])
        row = rep.to_dict()
        if rep.ok and rep.node != node:
            rep.failures.append(f"the bundle named {node}.bundle is of node {rep.node}")
        witnesses = [Cosigner(witness_name(w), k) for w, k in keys.items() if w != node]
        try:
            got = cosignatures(_checkpoint_note(part), witnesses)
        except NoteError as e:
            got = {}
            rep.failures.append(f"a cosignature of its checkpoint: {e}")
        row["cosigned_by"] = sorted(name.split("/")[1] for name in got)
        # at most the other nodes the bundle names (those that gave nothing included)
        want = min(min_cosigners, len((set(keys) | set(r.unreachable)) - {node}))
        if len(got) < want:
            rep.failures.append(f"its checkpoint is cosigned by {len(got)} of its peers, fewer than {want}")
        row["ok"] = not rep.failures
        row["failures"] = rep.failures
        r.nodes[node] = row
        r.failures += [f"{node}: {f}" for f in rep.failures]
