"""Node-local state that is not the log, authenticated so that an edit is seen.

State files live in ``<data-dir>/state/``.  Each one is *sealed*: its content
carries an HMAC under a key derived from the node key (``K_state``), bound to
the node id and to the file's purpose, so a file written by hand, copied from
another node or renamed to serve another purpose fails to open.  A reader that
gets :class:`StateTampered` must treat the file as absent *and* report it;
``engine.verify`` reports every state file that fails its check.

Two shapes (docs/FORMAT.md, "State files"):

* ``<name>.json``: one JSON object ``{"v": 1, "name": NAME, "data": DATA, "mac": HEX}``.
* ``<name>.jsonl``: one such object per line (``data`` is one record), for
  files that grow by appending; a last line without its newline is a write a
  crash cut short, not tampering.

The MAC is ``HMAC(K_state, b"auditlog state v1" ‖ 0x00 ‖ node ‖ 0x00 ‖ name ‖ 0x00 ‖ canonical(DATA))``
where ``canonical`` is compact JSON with sorted keys (UTF-8, non-ASCII as is).
A seal proves the node wrote the content, not that it is the newest content
the node wrote: a file replaced by an older copy of itself still opens.  State
whose rollback would matter (API keys, retention) is therefore derived from
the log itself, and sealed files only hold what may safely go back in time.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Any

from auditlog.engine.chain import NodeKey
from auditlog.engine.datadir import write_atomic
from auditlog.engine.errors import EngineError

STATE_VERSION = 1
_LABEL = b"auditlog state v1"


class StateTampered(EngineError):
    """A state file (or line) is not what this node wrote: edited, forged or foreign."""


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


class StateSeal:
    """Seals and opens state content for one node (the key never leaves it)."""

    __slots__ = ("_key", "_node")

    def __init__(self, node_key: NodeKey, node_id: str):
        self._key = node_key.derive(b"state")
        self._node = node_id.encode()

    def mac(self, name: str, data: Any) -> str:
        return self._key.mac(_LABEL, b"\0", self._node, b"\0", name.encode(), b"\0", canonical_json(data)).hex()

    def seal(self, name: str, data: Any) -> bytes:
        """One sealed object as a JSON line (no newline)."""
        return canonical_json({"v": STATE_VERSION, "name": name, "data": data, "mac": self.mac(name, data)})

    def open(self, name: str, raw: bytes | str) -> Any:
        """The data of a sealed object; StateTampered if it is not this node's ``name``."""
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise StateTampered(f"{name}: not a sealed state object (not JSON)") from None
        if not isinstance(obj, dict) or set(obj) != {"v", "name", "data", "mac"}:
            raise StateTampered(f"{name}: not a sealed state object")
        if obj["v"] != STATE_VERSION or obj["name"] != name or not isinstance(obj["mac"], str):
            raise StateTampered(f"{name}: sealed for another purpose or version")
        try:
            want = self.mac(name, obj["data"])
        except (TypeError, ValueError):
            raise StateTampered(f"{name}: content cannot be sealed") from None
        if not hmac.compare_digest(want, obj["mac"]):
            raise StateTampered(f"{name}: MAC does not match (edited, or not this node's)")
        return obj["data"]

    # -- whole files ---------------------------------------------------------------

    def write(self, path: Path, data: Any, *, sync: bool = True) -> None:
        """Write ``path`` (``<name>.json``) atomically, sealed, mode 0600."""
        path.parent.mkdir(mode=0o700, exist_ok=True)
        write_atomic(path, self.seal(path.stem, data) + b"\n", sync=sync, mode=0o600)

    def read(self, path: Path) -> Any:
        """The data of ``path``; None when it does not exist; StateTampered when it fails."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateTampered(f"{path.name}: cannot be read ({e.strerror or e})") from None
        return self.open(path.stem, raw)

    def read_lines(self, path: Path) -> tuple[list[Any], list[str]]:
        """Records of a ``<name>.jsonl`` file: (the ones that open, problems with the others).

        A last line without a newline is a torn append (a crash) and is
        neither returned nor a problem.
        """
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return [], []
        except OSError as e:
            return [], [f"{path.name}: cannot be read ({e.strerror or e})"]
        lines = raw.split(b"\n")
        lines.pop()  # after the last newline: empty, or a torn line
        out, problems = [], []
        for i, line in enumerate(lines, 1):
            try:
                out.append(self.open(path.stem, line))
            except StateTampered as e:
                problems.append(f"{path.name} line {i}: {str(e).split(': ', 1)[-1]}")
        return out, problems

    def __repr__(self) -> str:
        return f"StateSeal(node={self._node.decode()!r}, key=<hidden>)"


def check_state_dir(state_dir: Path, seal: StateSeal) -> list[tuple[str, str]]:
    """(file name, problem) for every state file that fails its seal."""
    out: list[tuple[str, str]] = []
    try:
        names = sorted(p.name for p in state_dir.iterdir())
    except FileNotFoundError:
        return out
    for name in names:
        path = state_dir / name
        if name.endswith(".json"):
            try:
                seal.read(path)
            except StateTampered as e:
                out.append((name, str(e)))
        elif name.endswith(".jsonl"):
            out.extend((name, p) for p in seal.read_lines(path)[1])
    return out
