"""What a node certificate says about a node: its node id (a URI SAN
``auditlog-node:<id>``) and, when it was issued with one, its Ed25519 signing key
(FORMAT.md section 16.1).  Read by the peer listener, the witness and the bundle
verifier alike."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from auditlog.engine.errors import ConfigError

NODE_URI_PREFIX = "auditlog-node:"
#: the extension binding a node certificate to the node's Ed25519 signing key (an
#: OID under 2.25, derived from a UUID as ITU-T X.667 allows)
SIGNING_KEY_OID = x509.ObjectIdentifier("2.25.139413223633151210234107594431944771424")


def public_pem_der(public_raw: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of a raw Ed25519 public key."""
    return Ed25519PublicKey.from_public_bytes(public_raw).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def signing_key_of(cert: x509.Certificate) -> bytes | None:
    """The raw Ed25519 key a node certificate binds (None: it binds none); ConfigError
    when the extension is there but holds no Ed25519 key."""
    try:
        ext = cert.extensions.get_extension_for_oid(SIGNING_KEY_OID)
    except x509.ExtensionNotFound:
        return None
    try:
        key = serialization.load_der_public_key(ext.value.value)
    except (ValueError, TypeError, AttributeError):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError("the certificate's signing-key extension holds no Ed25519 public key")
    return key.public_bytes_raw()


def node_id_of(der_or_dict) -> str | None:
    """The node id a peer certificate names (from ``SSLSocket.getpeercert``'s dict)."""
    if isinstance(der_or_dict, dict):
        for kind, value in der_or_dict.get("subjectAltName", ()):
            if kind == "URI" and value.startswith(NODE_URI_PREFIX):
                return value[len(NODE_URI_PREFIX) :]
        return None
    cert = x509.load_der_x509_certificate(der_or_dict)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(NODE_URI_PREFIX):
            return uri[len(NODE_URI_PREFIX) :]
    return None
