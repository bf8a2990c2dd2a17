"""Signed notes and checkpoints (engine.note) against the C2SP documents' own
examples, round trips with the node's key, and hostile notes refused."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditlog.engine.note import (
    MAX_NOTE_BYTES,
    Checkpoint,
    NoteError,
    Verifier,
    open_note,
    sign,
    signature_line,
)
from auditlog.engine.signing import SigningKey

# c2sp.org/signed-note, section "Example" (C2SP/C2SP, signed-note.md)
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n"
    "\n"
    "— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)
# c2sp.org/tlog-checkpoint, its opening example (C2SP/C2SP, tlog-checkpoint.md)
SPEC_CHECKPOINT_TEXT = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"

KEY = SigningKey(bytes(range(32)))
OTHER = SigningKey(bytes(range(1, 33)))


def test_the_specifications_example_note_verifies():
    v = Verifier.parse(SPEC_VKEY)
    assert v.name == "example.com/foo" and v.key_id.hex() == "530d903a" and str(v) == SPEC_VKEY
    text, signers = open_note(SPEC_NOTE, [v])
    assert text == "This is an example message.\n" and signers == [v]
    # one changed character in the text, and the note is refused
    with pytest.raises(NoteError, match="does not verify"):
        open_note(SPEC_NOTE.replace("example message", "example massage"), [v])


def test_the_specifications_example_checkpoint_parses():
    cp = Checkpoint.parse(SPEC_CHECKPOINT_TEXT)
    assert cp.origin == "example.com/behind-the-sofa" and cp.size == 20852163
    assert cp.root == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.text() == SPEC_CHECKPOINT_TEXT


def test_sign_and_open_with_the_nodes_key():
    cp = Checkpoint("auditlog.example/gw1", 42, bytes(range(32)))
    note = sign(cp.text(), "auditlog.example/gw1", KEY)
    v = Verifier.of("auditlog.example/gw1", KEY.public_raw)
    text, signers = open_note(note, [v])
    assert Checkpoint.parse(text) == cp and signers == [v]
    assert Verifier.parse(str(v)) == v
    # a cosignature by another key is ignored by whoever does not trust it, checked by whoever does
    w = Verifier.of("witness.example/w1", OTHER.public_raw)
    cosigned = note + signature_line(cp.text(), "witness.example/w1", OTHER)
    assert open_note(cosigned, [v])[1] == [v]
    assert open_note(cosigned, [v, w])[1] == [v, w]
    with pytest.raises(NoteError, match="no trusted key"):
        open_note(note, [w])
    # a known name and ID with a signature that fails rejects the whole note
    forged = note + signature_line(cp.text().replace("42", "43"), "witness.example/w1", OTHER)
    with pytest.raises(NoteError, match="witness.example/w1 does not verify"):
        open_note(forged, [v, w])


@pytest.mark.parametrize(
    "note",
    [
        "",
        "no blank line\n— a AAAAAAA=\n",
        "text\n\n",
        "text\n\n— \n",
        "text\n\n-- example.com/foo AAAAAAAA\n",
        "text\n\n— example.com/foo not*base64\n",
        "text\n\n— example.com/foo AAAA\n",
        "text\n\n— exa mple AAAAAAAA\n",
        "text\n\n— a+b AAAAAAAA\n",
        "te\x01xt\n\n— a AAAAAAAA\n",
        "text\n\n— a AAAAAAAA",
        "x" * (MAX_NOTE_BYTES + 1),
        b"\xff\xfe\n\n",
        "text\n\n" + "— a AAAAAAAA\n" * 65,
    ],
)
def test_hostile_notes_are_refused(note):
    with pytest.raises(NoteError):
        open_note(note, [Verifier.of("a", KEY.public_raw)])


@pytest.mark.parametrize(
    "text",
    [
        "o\n1\n",
        "o\n01\n" + base64.b64encode(b"\0" * 32).decode() + "\n",
        "o\n-1\n" + base64.b64encode(b"\0" * 32).decode() + "\n",
        "o\n1\n" + base64.b64encode(b"\0" * 31).decode() + "\n",
        "o\n1\n" + base64.b64encode(b"\0" * 32).decode(),
        "o\n1\n" + base64.b64encode(b"\0" * 32).decode() + "\n\n",
        "\n1\n" + base64.b64encode(b"\0" * 32).decode() + "\n",
        "o\n1 \n" + base64.b64encode(b"\0" * 32).decode() + "\n",
    ],
)
def test_malformed_checkpoints_are_refused(text):
    with pytest.raises(NoteError):
        Checkpoint.parse(text)


@pytest.mark.parametrize(
    "vkey", ["", "a+b", "a+530d903a+", "a+530D903A+" + "A" * 44, SPEC_VKEY.replace("530d", "530e")]
)
def test_malformed_verifier_keys_are_refused(vkey):
    with pytest.raises(NoteError):
        Verifier.parse(vkey)


@settings(max_examples=100, deadline=None)
@given(
    origin=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="+"), min_size=1),
    size=st.integers(0, 2**63),
    root=st.binary(min_size=32, max_size=32),
    flip=st.integers(0, 10_000),
)
def test_checkpoints_round_trip_and_any_changed_byte_is_refused(origin, size, root, flip):
    cp = Checkpoint(origin, size, root)
    note = sign(cp.text(), origin, KEY)
    v = Verifier.of(origin, KEY.public_raw)
    assert Checkpoint.parse(open_note(note, [v])[0]) == cp
    raw = bytearray(note.encode())
    raw[flip % len(raw)] ^= 0x01
    with pytest.raises(NoteError):  # every changed bit: text, name, key ID, signature, layout
        open_note(bytes(raw), [v])
