"""An auditor's own check of an evidence bundle, written from docs/FORMAT.md
(sections 5.1, 14 and 15) alone: the standard library and ``cryptography``,
nothing of auditlog.  ``check(bundle_bytes, pem) -> list of problems`` (empty:
the bundle holds)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
import struct
import tarfile

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import load_pem_public_key

NAMES = ["manifest.txt", "checkpoint.txt", "node.pub", "entries.ndjson", "proofs.ndjson", "boundaries.ndjson"]


# -- msgpack, the canonical way of section 5.1 ----------------------------------------


def pack(v) -> bytes:
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 128:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack("b", v)
        if v >= 0:
            for tag, fmt, top in (
                (0xCC, ">B", 1 << 8),
                (0xCD, ">H", 1 << 16),
                (0xCE, ">I", 1 << 32),
                (0xCF, ">Q", 1 << 64),
            ):
                if v < top:
                    return bytes([tag]) + struct.pack(fmt, v)
        for tag, fmt, lo in (
            (0xD0, ">b", -(1 << 7)),
            (0xD1, ">h", -(1 << 15)),
            (0xD2, ">i", -(1 << 31)),
            (0xD3, ">q", -(1 << 63)),
        ):
            if v >= lo:
                return bytes([tag]) + struct.pack(fmt, v)
        raise ValueError("integer out of range")
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode("utf-8", "surrogatepass")
        n = len(b)
        if n < 32:
            return bytes([0xA0 | n]) + b
        if n < 256:
            return b"\xd9" + bytes([n]) + b
        if n < 65536:
            return b"\xda" + struct.pack(">H", n) + b
        return b"\xdb" + struct.pack(">I", n) + b
    if isinstance(v, list):
        n = len(v)
        head = (
            bytes([0x90 | n])
            if n < 16
            else (b"\xdc" + struct.pack(">H", n) if n < 65536 else b"\xdd" + struct.pack(">I", n))
        )
        return head + b"".join(pack(x) for x in v)
    if isinstance(v, dict):
        n = len(v)
        head = (
            bytes([0x80 | n])
            if n < 16
            else (b"\xde" + struct.pack(">H", n) if n < 65536 else b"\xdf" + struct.pack(">I", n))
        )
        return head + b"".join(pack(k) + pack(x) for k, x in v.items())
    raise ValueError(f"cannot encode {type(v).__name__}")


def ts_us(text: str) -> int:
    d = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    delta = d - epoch
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def leaf(e: dict) -> bytes:
    fields = [e["node"], e["seq"], ts_us(e["ts"]), e["user"], e["action"], e["target"], e["domain"], e["ip"]]
    fields += [e["user_agent"], e["success"], e["details"]]
    data = pack(fields) + bytes.fromhex(e["signature"])
    return hashlib.sha256(b"\x00" + data).digest()


# -- trees (RFC 9162 section 2.1.1) and range proofs (FORMAT.md section 15) ---------------


def mth(hashes: list[bytes]) -> bytes:
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(hashes[:k]) + mth(hashes[k:])).digest()


def run_holds(leaves: list[bytes], first: int, size: int, proof: list[bytes], root: bytes) -> bool:
    """Leaves ``first .. first + len(leaves) - 1`` of the tree of ``size`` (0-based)."""
    end = first + len(leaves)
    if not 0 <= first < end <= size:
        return False
    pending = list(proof)

    def walk(lo: int, hi: int) -> bytes | None:
        if hi <= first or lo >= end:
            return pending.pop(0) if pending else None
        if first <= lo and hi <= end:
            return mth(leaves[lo - first : hi - first])
        k = 1
        while k * 2 < hi - lo:
            k *= 2
        left, right = walk(lo, lo + k), walk(lo + k, hi)
        if left is None or right is None:
            return None
        return hashlib.sha256(b"\x01" + left + right).digest()

    return walk(0, size) == root and not pending


# -- signed notes (section 14) ------------------------------------------------------------


def note_text(note: bytes, name: str, pub: bytes) -> str | None:
    """The text of a note signed by ``pub`` under ``name``, else None."""
    s = note.decode("utf-8")
    cut = s.rfind("\n\n")
    if cut < 0:
        return None
    text, sigs = s[: cut + 1], s[cut + 2 :].split("\n")
    if sigs[-1] != "":
        return None
    kid = hashlib.sha256(name.encode() + b"\n\x01" + pub).digest()[:4]
    key = load_pem_or_raw(pub)
    for line in sigs[:-1]:
        if not line.startswith("\u2014 "):
            return None
        who, b64 = line[2:].split(" ")
        raw = base64.b64decode(b64, validate=True)
        if base64.b64encode(raw).decode() != b64:
            return None
        if who == name and raw[:4] == kid:
            try:
                key.verify(raw[4:], text.encode())
            except InvalidSignature:
                return None
            return text
    return None


def load_pem_or_raw(pub: bytes):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(pub)


# -- the bundle (section 15) ----------------------------------------------------------------


def check(bundle: bytes, pem: bytes) -> list[str]:
    pub = load_pem_public_key(pem).public_bytes_raw()
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tf:
        infos = tf.getmembers()
        if [i.name for i in infos] != NAMES:
            return ["not the members of a bundle"]
        m = {i.name: tf.extractfile(i).read() for i in infos}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name in NAMES:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = len(m[name]), 0, 0o644, 0, 0, "", ""
            tf.addfile(ti, io.BytesIO(m[name]))
    if buf.getvalue() != bundle:
        return ["not the canonical archive of its members"]
    sig_name = m["manifest.txt"].decode().rsplit("\n\n", 1)[1].split(" ")[1]
    text = note_text(m["manifest.txt"], sig_name, pub)
    if text is None:
        return ["the manifest is not signed by the key"]
    lines = text.rstrip("\n").split("\n")
    info = dict(x.split(": ", 1) for x in lines[1:] if ": " in x)
    if lines[0] != "auditlog evidence bundle v1" or sig_name != "auditlog/" + info["node"]:
        return ["not a bundle of this node"]
    for x in lines:
        if x.startswith("sha256 "):
            _, name, hexd = x.split(" ")
            if hashlib.sha256(m[name]).hexdigest() != hexd:
                return [f"{name} is not the one the manifest names"]
    cp = note_text(m["checkpoint.txt"], sig_name, pub)
    if cp is None:
        return ["the checkpoint is not signed by the key"]
    origin, size_s, root_b64 = cp.rstrip("\n").split("\n")[:3]
    size, root = int(size_s), base64.b64decode(root_b64)
    if info["checkpoint"] != f"size {size}, root {root_b64}" or origin != sig_name:
        return ["the manifest and the checkpoint disagree"]
    problems = []
    entries = [json.loads(x) for x in m["entries.ndjson"].decode().splitlines()]
    proofs = [json.loads(x) for x in m["proofs.ndjson"].decode().splitlines()]
    bounds = [json.loads(x) for x in m["boundaries.ndjson"].decode().splitlines()]
    leaves = {}
    for e in entries + [b["entry"] for b in bounds]:
        if e["node"] != info["node"] or e["seq"] in leaves:
            problems.append(f"entry {e['seq']} is not the node's or there twice")
        leaves[e["seq"]] = leaf(e)
    proven = set()
    for p in proofs:
        run = list(range(p["first_seq"], p["last_seq"] + 1))
        if not run or len(run) > len(leaves) or any(q not in leaves or q in proven for q in run):
            problems.append("a proof for entries the bundle does not hold")
            continue
        proven.update(run)
        hashes = [bytes.fromhex(h) for h in p["proof"]]
        if not run_holds([leaves[q] for q in run], run[0] - 1, size, hashes, root):
            problems.append(f"seqs {run[0]}..{run[-1]} are not proven")
    if proven != set(leaves):
        problems.append("entries without a proof")
    seqs = [e["seq"] for e in entries]
    if seqs != sorted(set(seqs)):
        problems.append("entries out of order")
    if info["claim"] == "complete":
        lo, hi = json.loads(info["window"].split(" (")[0])
        if seqs and seqs != list(range(seqs[0], seqs[-1] + 1)):
            problems.append("a gap in the seqs")
        for e in entries:
            t = ts_us(e["ts"])
            if (lo is not None and t < lo) or (hi is not None and t >= hi):
                problems.append(f"entry {e['seq']} lies outside the window")
        side = {b["side"]: b["entry"] for b in bounds}
        after = side.get("after")
        first = seqs[0] if seqs else (after["seq"] if after else size + 1)
        last = seqs[-1] if seqs else first - 1
        before = side.get("before")
        if first > 1 and not (before and before["seq"] == first - 1 and lo is not None and ts_us(before["ts"]) < lo):
            problems.append("the start of the window is not shown")
        if last < size and not (after and after["seq"] == last + 1 and hi is not None and ts_us(after["ts"]) >= hi):
            problems.append("the end of the window is not shown")
    elif info["claim"] != "authentic":
        problems.append("unknown claim")
    return problems


# -- the cluster bundle (sections 15.4 and 16) -----------------------------------------------

SIGNING_KEY_OID = "2.25.139413223633151210234107594431944771424"


def _cert_key(pem: bytes, node: str, cas: list) -> bytes | str:
    """The Ed25519 key the node certificate binds, or what is wrong with it."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    cert = x509.load_pem_x509_certificate(pem)
    issued = False
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            issued = True
        except (ValueError, TypeError, InvalidSignature):
            pass
    if not issued:
        return f"{node}: not issued by the CA"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if f"auditlog-node:{node}" not in san.get_values_for_type(x509.UniformResourceIdentifier):
        return f"{node}: the certificate names another node"
    for ext in cert.extensions:
        if ext.oid.dotted_string == SIGNING_KEY_OID:
            return load_der_public_key(ext.value.value).public_bytes_raw()
    return f"{node}: the certificate binds no signing key"


def cosigned(note: bytes, witness: str, pub: bytes) -> bool:
    """Whether the checkpoint note carries a valid cosignature/v1 of ``witness``."""
    s = note.decode("utf-8")
    cut = s.rfind("\n\n")
    text, sigs = s[: cut + 1], s[cut + 2 :].split("\n")[:-1]
    name = f"auditlog/{witness}/witness"
    kid = hashlib.sha256(name.encode() + b"\n\x04" + pub).digest()[:4]
    for line in sigs:
        who, b64 = line[2:].split(" ")
        raw = base64.b64decode(b64, validate=True)
        if who != name or raw[:4] != kid or len(raw) != 4 + 8 + 64:
            continue
        t = struct.unpack(">Q", raw[4:12])[0]
        msg = b"cosignature/v1\ntime " + str(t).encode() + b"\n" + text.encode()
        try:
            load_pem_or_raw(pub).verify(raw[12:], msg)
            return True
        except InvalidSignature:
            return False
    return False


def check_cluster(bundle: bytes, ca_pem: bytes, min_cosigners: int = 1) -> list[str]:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    try:
        cas = x509.load_pem_x509_certificates(ca_pem)
        with tarfile.open(fileobj=io.BytesIO(bundle)) as tf:
            members = [(i.name, tf.extractfile(i).read()) for i in tf.getmembers()]
    except Exception as e:  # an auditor's script: anything unreadable is a failure
        return [f"unreadable: {e}"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, body in members:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = len(body), 0, 0o644, 0, 0, "", ""
            tf.addfile(ti, io.BytesIO(body))
    if buf.getvalue() != bundle:
        return ["not the canonical archive of its members"]
    if not members or members[0][0] != "manifest.txt":
        return ["no manifest first"]
    m = dict(members[1:])
    keys: dict[str, bytes] = {}
    for name, body in members[1:]:
        if name.endswith(".pem"):
            try:
                got = _cert_key(body, name[:-4], cas)
            except Exception as e:
                got = f"{name}: {e}"
            if isinstance(got, str):
                return [got]
            keys[name[:-4]] = got
    manifest = m.get("manifest.txt") or members[0][1]
    lines = manifest.decode("utf-8").split("\n")
    if lines[0] != "auditlog cluster evidence bundle v1" or not lines[1].startswith("exporter: "):
        return ["not a cluster bundle"]
    exporter = lines[1][len("exporter: ") :]
    if exporter not in keys:
        return ["the exporter's certificate is missing"]
    text = note_text(manifest, f"auditlog/{exporter}", keys[exporter])
    if text is None:
        return ["the manifest is not signed by the exporting node"]
    named = {}
    for x in text.rstrip("\n").split("\n"):
        if x.startswith("sha256 "):
            _, name, hexd = x.split(" ")
            named[name] = hexd
    if sorted(named) != sorted(m):
        return ["the manifest names other members than the bundle holds"]
    problems = []
    for name, body in m.items():
        if hashlib.sha256(body).hexdigest() != named[name]:
            problems.append(f"{name} is not the one the manifest names")
    for name, body in m.items():
        if not name.endswith(".bundle"):
            continue
        node = name[: -len(".bundle")]
        if node not in keys:
            problems.append(f"{name} has no certificate")
            continue
        pem = Ed25519PublicKey.from_public_bytes(keys[node]).public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
        )
        try:
            problems += [f"{node}: {p}" for p in check(body, pem)]
            with tarfile.open(fileobj=io.BytesIO(body)) as tf:
                note = tf.extractfile("checkpoint.txt").read()
            n = sum(cosigned(note, w, k) for w, k in keys.items() if w != node)
        except Exception as e:  # an auditor's script: anything unreadable is a failure
            problems.append(f"{node}: unreadable ({e!r})")
            continue
        others = set(keys) | {x.split(" ")[1].rstrip(":") for x in text.split("\n") if x.startswith("unreachable ")}
        if n < min(min_cosigners, len(others - {node})):
            problems.append(f"{node}: its checkpoint has {n} cosignatures")
    return problems
