"""Range proofs (engine.merkle.range_proof / verify_range): the leaves of a run of
consecutive entries, proven against a root with O(log n) hashes for the whole run."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from auditlog.engine.merkle import CompactTree, leaf_hash, range_proof, root, verify_range


def tree(n: int):
    leaves = [leaf_hash(hashlib.sha256(str(i).encode()).digest()) for i in range(n)]
    store = {}
    t = CompactTree()
    for h in leaves:
        store.update({(lv, ix): x for lv, ix, x in t.append(h)})
    return leaves, (lambda lv, ix: store[(lv, ix)])


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=st.integers(1, 300))
def test_every_range_verifies_and_tampering_does_not(data, n):
    leaves, get = tree(n)
    top = root(leaves)
    a = data.draw(st.integers(0, n - 1))
    b = data.draw(st.integers(a + 1, n))
    proof = range_proof(a, b, n, get)
    assert len(proof) <= 2 * n.bit_length()
    assert verify_range(leaves[a:b], a, n, proof, top)
    assert not verify_range(leaves[a:b], a, n, proof, leaf_hash(b"other root"))
    if b - a > 1:
        assert not verify_range(leaves[a : b - 1], a, n, proof, top)  # a leaf fewer
        assert not verify_range(leaves[a + 1 : b], a, n, proof, top)
        swapped = list(leaves[a:b])
        swapped[0], swapped[1] = swapped[1], swapped[0]
        assert not verify_range(swapped, a, n, proof, top)
    if a > 0:
        assert not verify_range(leaves[a:b], a - 1, n, proof, top)  # shifted
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        assert not verify_range(leaves[a:b], a, n, bad, top)
        assert not verify_range(leaves[a:b], a, n, proof[:-1], top)
        assert not verify_range(leaves[a:b], a, n, [*proof, proof[0]], top)
    # the whole tree needs no proof; a single leaf's proof is as long as an inclusion proof
    assert range_proof(0, n, n, get) == []
    assert len(range_proof(a, a + 1, n, get)) <= (n - 1).bit_length()


def test_hostile_input_gives_false():
    leaves, get = tree(10)
    proof = range_proof(2, 5, 10, get)
    top = root(leaves)
    for args in (
        (leaves[2:5], -1, 10, proof, top),
        (leaves[2:5], 2, 4, proof, top),
        ([], 2, 10, proof, top),
        (leaves[2:5], 2, 10, [b"x"] * len(proof), top),
        ("abc", 2, 10, proof, top),
        (leaves[2:5], 2, 10, proof, b"short"),
        (leaves[2:5], 2, 10, [proof[0]] * 1000, top),
        (leaves[2:5], True, 10, proof, top),
    ):
        assert verify_range(*args) is False
