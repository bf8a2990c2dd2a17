"""Cluster PKI: a private CA and per-node certificates for the peer listener.

A node certificate names the node id in its subject CN and as a URI SAN
``auditlog-node:<id>``; a peer is accepted only with a certificate from the
cluster CA whose node id matches the configured peer.  Keys are EC P-256,
written with mode 0600.

Issued with the node's Ed25519 signing key (``issue-cert --signing-key
node.pub``), the certificate also binds the node id to that key, in a
non-critical extension ``SIGNING_KEY_OID`` holding the key's DER
SubjectPublicKeyInfo: one CA certificate then lets anyone trust every node's
checkpoints and cosignatures (FORMAT.md section 16).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from auditlog.engine.datadir import check_node_id
from auditlog.engine.errors import ConfigError
from auditlog.engine.identity import NODE_URI_PREFIX, SIGNING_KEY_OID, node_id_of, public_pem_der, signing_key_of

CA_DAYS = 3650
CERT_DAYS = 825


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def ca_init(out: Path, name: str = "auditlog cluster CA") -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / "ca.pem", out / "ca.key"
    for p in (cert_path, key_path):
        if p.exists():
            raise ConfigError(f"{p} already exists; refusing to overwrite a CA")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _load_ca(ca_dir: Path):
    try:
        cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    except FileNotFoundError as e:
        raise ConfigError(
            f"no cluster CA in {ca_dir} ({Path(e.filename).name} missing; run: auditlog cluster ca-init --out DIR)"
        ) from None
    except ValueError:
        raise ConfigError(f"the CA files in {ca_dir} are not a PEM certificate and key") from None
    return cert, key


def issue_cert(
    ca_dir: Path, node: str, sans: list[str], out: Path, signing_key: bytes | None = None
) -> tuple[Path, Path]:
    """The certificate and key of ``node`` (bound to the raw Ed25519 ``signing_key`` when given)."""
    check_node_id(node)
    ca_cert, ca_key = _load_ca(ca_dir)
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / f"{node}.pem", out / f"{node}.key"
    for p in (cert_path, key_path):
        if p.exists():
            raise ConfigError(f"{p} already exists; refusing to overwrite it")
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(NODE_URI_PREFIX + node)]
    for s in sans or ["127.0.0.1", "localhost"]:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(s)))
        except ValueError:
            if not s or any(c in s for c in " /\\@") or len(s) > 253:
                raise ConfigError(f"--san must be a host name or an IP address, got {s!r}") from None
            names.append(x509.DNSName(s))
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if signing_key is not None:
        spki = public_pem_der(signing_key)
        builder = builder.add_extension(x509.UnrecognizedExtension(SIGNING_KEY_OID, spki), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def check_own_cert(cert_path: Path, node_id: str, public_raw: bytes) -> str | None:
    """Refuse a certificate of another node or bound to another signing key; a warning
    (or None) for one bound to no signing key."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the cluster certificate {cert_path}: {e}") from None
    named = node_id_of(cert.public_bytes(serialization.Encoding.DER))
    if named != node_id:
        raise ConfigError(f"the cluster certificate {cert_path} is for node {named!r}, not {node_id!r}")
    bound = signing_key_of(cert)
    if bound is None:
        return (
            f"the cluster certificate {cert_path} binds no signing key: peers will not cosign this node's "
            "checkpoints (reissue it: auditlog cluster issue-cert ... --signing-key <data-dir>/node.pub)"
        )
    if bound != public_raw:
        raise ConfigError(
            f"the cluster certificate {cert_path} binds another signing key than this node's node.pub "
            "(reissue it with --signing-key <data-dir>/node.pub)"
        )
    return None


def server_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """TLS for the peer listener: client certificates from the cluster CA are required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(ctx, ca, cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """TLS for calling peers: server verified against the cluster CA, our cert presented."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(ctx, ca, cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    # the node id in the certificate is what identifies a peer; host names are
    # checked against the SANs issued with --san
    ctx.check_hostname = True
    return ctx


def _load(ctx: ssl.SSLContext, ca: Path, cert: Path, key: Path) -> None:
    try:
        ctx.load_verify_locations(cafile=str(ca))
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except FileNotFoundError as e:
        raise ConfigError(f"cluster TLS file missing: {e.filename}") from None
    except (ssl.SSLError, ValueError) as e:
        raise ConfigError(f"cluster TLS files are not usable ({ca}, {cert}, {key}): {e}") from None
