"""The node certificate binds the node id to its Ed25519 signing key.

``auditlog cluster issue-cert --signing-key node.pub`` (the real CLI) puts the key
in the certificate's extension, an auditor's plain ``cryptography`` reads it back
under the CA; bad key files get a clear error and write nothing; ``serve``
refuses a certificate of another node or another key (exit 2, before it listens)
and warns about one that binds none.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key
from helpers_http import AUDITLOG, clean_env, free_port, run_cli

from auditlog.bench.servers import wait_serving
from auditlog.engine.identity import SIGNING_KEY_OID, signing_key_of
from auditlog.engine.signing import read_public_key
from auditlog.query.cluster.pki import check_own_cert


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([AUDITLOG, *args], capture_output=True, text=True, timeout=60, env=clean_env())


@pytest.fixture
def setup(tmp_path):
    assert cli("cluster", "ca-init", "--out", str(tmp_path / "ca")).returncode == 0
    for n in ("gw1", "gw2"):
        assert run_cli(tmp_path / n, "init", "--node-id", n).returncode == 0
    return tmp_path


def _issue(root: Path, node: str, key: Path | None, out: str = "tls") -> subprocess.CompletedProcess:
    args = ["cluster", "issue-cert", "--ca", str(root / "ca"), "--node", node, "--out", str(root / out)]
    if key is not None:
        args += ["--signing-key", str(key)]
    return cli(*args)


def test_issue_cert_binds_the_signing_key_an_auditor_reads_back(setup):
    root = setup
    p = _issue(root, "gw1", root / "gw1" / "node.pub")
    assert p.returncode == 0, p.stderr
    pub = read_public_key(root / "gw1" / "node.pub")
    assert "bound to the signing key SHA256:" in p.stdout
    cert = x509.load_pem_x509_certificate((root / "tls" / "gw1.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((root / "ca" / "ca.pem").read_bytes())
    # what an auditor does with cryptography alone: issued by the CA, the key in the extension
    cert.verify_directly_issued_by(ca)
    ext = cert.extensions.get_extension_for_oid(SIGNING_KEY_OID)
    assert ext.critical is False
    assert load_der_public_key(ext.value.value).public_bytes_raw() == pub
    assert signing_key_of(cert) == pub
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "auditlog-node:gw1" in san.get_values_for_type(x509.UniformResourceIdentifier)
    # without --signing-key: no binding, and the CLI says what that costs
    p = _issue(root, "gw2", None)
    assert p.returncode == 0 and "peers will not cosign" in p.stdout
    assert signing_key_of(x509.load_pem_x509_certificate((root / "tls" / "gw2.pem").read_bytes())) is None


def test_bad_signing_key_files_are_refused_and_nothing_is_written(setup):
    root = setup
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    cases = {
        "missing.pub": None,
        "garbage.pub": b"not a key\n",
        "ec.pub": ec_pem,
        "huge.pub": b"-----BEGIN PUBLIC KEY-----\n" + b"A" * 100_000,
        "private.pem": (root / "gw1" / "node.sign").read_bytes(),
    }
    for name, data in cases.items():
        path = root / name
        if data is not None:
            path.write_bytes(data)
        p = _issue(root, "gw1", path, out=f"tls-{name}")
        assert p.returncode != 0 and p.returncode < 100, (name, p.returncode, p.stderr)
        assert name in p.stderr and "Traceback" not in p.stderr, (name, p.stderr)
        assert not (root / f"tls-{name}").exists() or not any((root / f"tls-{name}").iterdir()), name


def test_check_own_cert(setup):
    root = setup
    _issue(root, "gw1", root / "gw1" / "node.pub")
    _issue(root, "gw2", None)
    pub1 = read_public_key(root / "gw1" / "node.pub")
    pub2 = read_public_key(root / "gw2" / "node.pub")
    assert check_own_cert(root / "tls" / "gw1.pem", "gw1", pub1) is None
    from auditlog.engine.errors import ConfigError

    with pytest.raises(ConfigError, match="another signing key"):
        check_own_cert(root / "tls" / "gw1.pem", "gw1", pub2)
    with pytest.raises(ConfigError, match="is for node 'gw1', not 'gw2'"):
        check_own_cert(root / "tls" / "gw1.pem", "gw2", pub2)
    assert "binds no signing key" in check_own_cert(root / "tls" / "gw2.pem", "gw2", pub2)


def _serve(root: Path, node: str, cert: str) -> subprocess.Popen:
    http, peer = free_port(), free_port()
    cfg = root / f"{node}.toml"
    cfg.write_text(
        f'node_id = "{node}"\n[server]\nlisten = "127.0.0.1:{http}"\n[cluster]\nlisten = "127.0.0.1:{peer}"\n'
        f'ca = "{root / "ca" / "ca.pem"}"\ncert = "{root / "tls" / cert}.pem"\nkey = "{root / "tls" / cert}.key"\n'
    )
    proc = subprocess.Popen(
        [AUDITLOG, "--data-dir", str(root / node), "--config", str(cfg), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    proc.ports = (http, peer)
    return proc


def test_serve_refuses_a_certificate_of_another_node_or_key(setup):
    root = setup
    _issue(root, "gw1", root / "gw1" / "node.pub")
    _issue(root, "gw2", None)
    # gw2 given gw1's certificate (another node, another key): refused before listening
    proc = _serve(root, "gw2", "gw1")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, (proc.returncode, err)
    assert "is for node 'gw1', not 'gw2'" in err and "Traceback" not in err
    # gw2 with its own certificate that binds no key: serves, and says what that costs
    proc = _serve(root, "gw2", "gw2")
    try:
        # ready once /healthz answers (the port itself is taken before the node starts)
        why = wait_serving(proc, f"http://127.0.0.1:{proc.ports[0]}", timeout=30)
        assert why is None, why
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "binds no signing key" in err
