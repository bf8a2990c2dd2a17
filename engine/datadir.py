"""The data directory: its layout, ``init``, and the node identity.

<data-dir>/node.id          the node id (text)
<data-dir>/node.key         32 random bytes, mode 0600
<data-dir>/node.sign        the Ed25519 signing key's 32-byte seed, mode 0600 (engine.signing)
<data-dir>/node.pub         its public half, PEM
<data-dir>/LOCK             the single-writer lock (fcntl)
<data-dir>/segments/*.seg   the log; *.idx and *.terms are derived (SIDE_SUFFIXES)
<data-dir>/state/           other node-local state (API keys, cursors)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from auditlog.engine.chain import NodeKey, create_key_file, load_key_file
from auditlog.engine.errors import AlreadyInitialisedError, ConfigError, KeyFileError, NotInitialisedError
from auditlog.engine.signing import (
    PUBLIC_KEY_FILE,
    SIGN_KEY_FILE,
    SigningKey,
    create_signing_key,
    load_signing_key,
)

#: files beside a segment, derived from it, that go with it: its indexes, and the line
#: files (``.lines``) earlier versions kept as a read cache (the writer deletes those)
SIDE_SUFFIXES = (".idx", ".terms", ".lines")
LEFTOVER_SUFFIX = ".lines"


def side_files(seg_path: Path) -> list[Path]:
    return [seg_path.with_suffix(s) for s in SIDE_SUFFIXES]


NODE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def check_node_id(node: str) -> str:
    if not isinstance(node, str) or not NODE_ID_RE.fullmatch(node):
        raise ConfigError(
            f"invalid node id {node!r}: use 1-63 characters a-z, 0-9 and '-', starting with a letter or digit"
        )
    return node


def fsync_dir(path: Path) -> None:
    """Make a directory entry change (create, rename, unlink) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, sync: bool = True, mode: int = 0o666, sync_dir: bool = False) -> None:
    """Write via a temp file and rename: a crash leaves the old or the new file, never half.

    ``mode`` applies from creation on (a secret is never readable by others,
    not even half-written; the umask still narrows it); ``sync`` makes the
    bytes durable before the rename, ``sync_dir`` the rename itself.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        os.unlink(tmp)  # a leftover would keep its own mode
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(path.parent)


@dataclass(frozen=True)
class DataDir:
    root: Path

    @property
    def segments(self) -> Path:
        return self.root / "segments"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def key_path(self) -> Path:
        return self.root / "node.key"

    @property
    def sign_key_path(self) -> Path:
        return self.root / SIGN_KEY_FILE

    @property
    def public_key_path(self) -> Path:
        return self.root / PUBLIC_KEY_FILE

    def signing_key(self) -> SigningKey:
        """The node's signing key (``KeyFileError`` when it is missing or unusable)."""
        return load_signing_key(self.sign_key_path, self.public_key_path)

    def ensure_signing_key(self) -> SigningKey:
        """The node's signing key, created first if the data dir has none (a data dir
        made before there were signing keys; called by the writer, which owns it).
        A public key without its private half is an error: the key was lost or
        removed, and a new one made silently would be a new identity."""
        if not self.sign_key_path.exists() and self.public_key_path.exists():
            raise KeyFileError(
                f"signing key file {self.sign_key_path} is missing but {self.public_key_path} is there: "
                f"restore {self.sign_key_path.name} from a backup (or, to give the node a new identity "
                f"its auditors must be told of, remove {self.public_key_path.name})"
            )
        if not self.sign_key_path.exists():
            try:
                return create_signing_key(self.sign_key_path, self.public_key_path)
            except FileExistsError:
                pass  # made meanwhile by another process
        return self.signing_key()

    @property
    def node_path(self) -> Path:
        return self.root / "node.id"

    @property
    def lock_path(self) -> Path:
        return self.root / "LOCK"

    def is_initialised(self) -> bool:
        return self.node_path.exists()

    def init(self, node_id: str) -> Node:
        check_node_id(node_id)
        if (
            self.node_path.exists()
            or self.key_path.exists()
            or self.sign_key_path.exists()
            or (self.segments.exists() and any(self.segments.iterdir()))
        ):
            raise AlreadyInitialisedError(f"{self.root} is already initialised; refusing to touch it")
        self.root.mkdir(parents=True, exist_ok=True)
        self.segments.mkdir(exist_ok=True)
        self.state.mkdir(mode=0o700, exist_ok=True)
        key = create_key_file(self.key_path)
        create_signing_key(self.sign_key_path, self.public_key_path)
        write_atomic(self.node_path, (node_id + "\n").encode(), sync_dir=True)
        return Node(node_id, key)

    def open(self) -> Node:
        if not self.node_path.exists():
            raise NotInitialisedError(
                f"{self.root} is not an auditlog data dir (run: auditlog --data-dir {self.root} init --node-id NAME)"
            )
        try:
            node_id = self.node_path.read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise NotInitialisedError(f"cannot read {self.node_path}: {e}") from None
        check_node_id(node_id)
        key = load_key_file(self.key_path)
        self.segments.mkdir(exist_ok=True)
        return Node(node_id, key)


@dataclass(frozen=True)
class Node:
    node_id: str
    key: NodeKey

    def __repr__(self) -> str:
        return f"Node({self.node_id!r})"
