"""The node's Ed25519 signing key (engine.signing): made by ``init`` (private half
0600, public half in ``node.pub``), made by the writer for a data dir from before,
shown by ``auditlog keys public``, never shown itself; broken, loose, mismatched or
hostile key files refused with one clear line."""

from __future__ import annotations

import copy
import os
import pickle
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from auditlog.cli.main import cli as auditlog_cli
from auditlog.engine.datadir import DataDir
from auditlog.engine.entry import EntryDraft
from auditlog.engine.errors import KeyFileError
from auditlog.engine.settings import StoreSettings
from auditlog.engine.signing import SigningKey, fingerprint, parse_public_key, public_pem, verify
from auditlog.engine.writer import LogWriter

SCRIPT = Path(sys.executable).with_name("auditlog")


def invoke(data_dir: Path, *args: str):
    runner = CliRunner(env={"AUDITLOG_DATA_DIR": None, "AUDITLOG_CONFIG": None})
    return runner.invoke(auditlog_cli, ["--data-dir", str(data_dir), *args], catch_exceptions=False)


def fresh(tmp_path: Path) -> DataDir:
    dd = DataDir(tmp_path / "d")
    dd.init("gw1")
    return dd


def test_init_makes_a_private_key_0600_and_its_public_half(tmp_path):
    dd = fresh(tmp_path)
    assert stat.S_IMODE(dd.sign_key_path.stat().st_mode) == 0o600
    assert len(dd.sign_key_path.read_bytes()) == 32
    pub = serialization.load_pem_public_key(dd.public_key_path.read_bytes())
    assert isinstance(pub, ed25519.Ed25519PublicKey)
    key = dd.signing_key()
    assert pub.public_bytes_raw() == key.public_raw
    # what it signs, the public half verifies (and nothing else)
    sig = key.sign(b"checkpoint")
    assert verify(key.public_raw, sig, b"checkpoint")
    assert not verify(key.public_raw, sig, b"checkpoinT")
    assert not verify(key.public_raw, sig[:-1] + bytes([sig[-1] ^ 1]), b"checkpoint")
    other = DataDir(tmp_path / "e")
    other.init("gw2")
    assert not verify(other.signing_key().public_raw, sig, b"checkpoint")


@pytest.mark.parametrize(
    "public, signature",
    [(b"", b"\0" * 64), (b"\0" * 31, b"\0" * 64), (b"\0" * 32, b"\0" * 63), ("x" * 32, b"\0" * 64), (None, None)],
)
def test_verify_never_raises_on_hostile_input(public, signature):
    assert verify(public, signature, b"m") is False


def test_keys_public_prints_the_pem_and_the_fingerprint(tmp_path):
    dd = fresh(tmp_path)
    r = invoke(dd.root, "keys", "public")
    assert r.exit_code == 0 and r.stdout.encode() == dd.public_key_path.read_bytes()
    assert r.stdout.startswith("-----BEGIN PUBLIC KEY-----\n") and r.stdout.endswith("-----END PUBLIC KEY-----\n")
    r = invoke(dd.root, "keys", "public", "--fingerprint")
    assert r.exit_code == 0 and r.stdout == fingerprint(dd.signing_key().public_raw) + "\n"
    assert r.stdout.startswith("SHA256:") and len(r.stdout.strip()) == len("SHA256:") + 64


def test_the_private_half_is_never_shown(tmp_path):
    dd = fresh(tmp_path)
    seed = dd.sign_key_path.read_bytes()
    key = dd.signing_key()
    texts = [repr(key), str(key), f"{key}", repr([key])]
    texts += [invoke(dd.root, "keys", "public").stdout, invoke(dd.root, "keys", "public", "--fingerprint").stdout]
    texts.append(invoke(dd.root, "init", "--node-id", "gw1").stderr)  # refused: already initialised
    for text in texts:
        assert seed.hex() not in text.lower() and seed.hex()[:16] not in text.lower()
        assert repr(seed) not in text
    assert "hidden" in repr(key) and key.fingerprint in repr(key)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(key)
    with pytest.raises(TypeError):
        copy.deepcopy(key)
    assert not hasattr(key, "__dict__")


def test_a_data_dir_from_before_gets_its_key_from_the_writer(tmp_path):
    dd = fresh(tmp_path)
    node = dd.open()
    for p in (dd.sign_key_path, dd.public_key_path):
        p.unlink()
    r = invoke(dd.root, "keys", "public")
    assert r.exit_code == 2 and "no signing key yet" in r.stderr and "serve, append or import" in r.stderr
    with LogWriter(dd, node, StoreSettings(fsync="none")) as w:
        w.append_batch([EntryDraft("alice", "auth.login")])
        made = w.signing_key
    assert stat.S_IMODE(dd.sign_key_path.stat().st_mode) == 0o600
    assert dd.signing_key().public_raw == made.public_raw
    with LogWriter(dd, node, StoreSettings(fsync="none")) as w:  # the same key on the next start
        assert w.signing_key.public_raw == made.public_raw


def test_a_lost_private_half_is_not_replaced_silently(tmp_path):
    """A public key without its private half: the writer refuses to start (a new key
    would be a new identity), and writes nothing."""
    dd = fresh(tmp_path)
    node = dd.open()
    pub = dd.public_key_path.read_bytes()
    dd.sign_key_path.unlink()
    before = sorted((p.name, p.stat().st_size) for p in dd.segments.iterdir())
    with pytest.raises(KeyFileError, match="missing but .*node.pub is there: restore node.sign"):
        LogWriter(dd, node, StoreSettings(fsync="none")).open()
    assert not dd.sign_key_path.exists() and dd.public_key_path.read_bytes() == pub
    assert sorted((p.name, p.stat().st_size) for p in dd.segments.iterdir()) == before
    r = invoke(dd.root, "append", "--user", "a", "--action", "auth.login")
    assert r.exit_code == 2 and r.stderr.startswith("auditlog: error: signing key file") and "Traceback" not in r.stderr


def damage_loose(dd: DataDir) -> str:
    dd.sign_key_path.chmod(0o644)
    return "readable by group or others"


def damage_short(dd: DataDir) -> str:
    dd.sign_key_path.write_bytes(b"\1" * 31)
    return "damaged (expected 32 bytes)"


def damage_other_pub(dd: DataDir) -> str:
    other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    dd.public_key_path.write_bytes(public_pem(other))
    return "does not hold the public half"


def damage_garbage_pub(dd: DataDir) -> str:
    dd.public_key_path.write_bytes(b"-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n")
    return "not a PEM public key"


def damage_ec_pub(dd: DataDir) -> str:
    k = ec.generate_private_key(ec.SECP256R1()).public_key()
    dd.public_key_path.write_bytes(
        k.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return "not an Ed25519 one"


def damage_huge_pub(dd: DataDir) -> str:
    dd.public_key_path.write_bytes(b"A" * 10_000_000)
    return "is not a public key file"


@pytest.mark.parametrize(
    "damage", [damage_loose, damage_short, damage_other_pub, damage_garbage_pub, damage_ec_pub, damage_huge_pub]
)
def test_broken_key_files_are_refused_with_one_clear_line(tmp_path, damage):
    dd = fresh(tmp_path)
    node = dd.open()
    expected = damage(dd)
    for args in (("keys", "public"), ("append", "--user", "a", "--action", "auth.login")):
        r = invoke(dd.root, *args)
        assert r.exit_code == 2, (args, r.stdout, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("auditlog: error: ") and expected in r.stderr
    with pytest.raises(KeyFileError, match=re.escape(expected)):
        LogWriter(dd, node, StoreSettings(fsync="none")).open()
    assert not list(dd.segments.glob("*.seg"))  # nothing written


def test_parse_public_key_takes_only_an_ed25519_pem():
    raw = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    assert parse_public_key(public_pem(raw), "k.pub") == raw
    for bad in (b"", b"\0" * 32, raw, b"-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n"):
        with pytest.raises(KeyFileError, match="k.pub"):
            parse_public_key(bad, "k.pub")
    with pytest.raises(KeyFileError):
        SigningKey(b"\0" * 31)


def test_keys_public_through_the_installed_script(tmp_path):
    dd = fresh(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITLOG_")}
    r = subprocess.run(
        [str(SCRIPT), "--data-dir", str(dd.root), "keys", "public"], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 0 and r.stdout.encode() == dd.public_key_path.read_bytes()
