"""API keys and roles: a projection of the log's own key entries.

A key looks like ``alk_<id>_<secret>``: the id finds the record, and the
whole key string is checked against ``secret_hmac``, its HMAC-SHA256 under
``K_api`` (the node key derived with ``b"api-keys"``), compared in constant
time.  The key itself is shown once, when it is created; high-entropy random
keys need no slow password hash, and without the node key the stored value is
useless to whoever reads an export of the log.

Where the keys live: in the log.  ``audit.api_key_create`` carries the key id,
role, name (the entry's target) and ``secret_hmac``; ``audit.api_key_revoke``
names the key id.  Only the node writes ``audit.*`` actions (ingest refuses
them), so the keys are what the node's own intact entries say, and a file
edited by hand grants nothing.  A revocation is never lost to damage: a
revoke entry that still decodes revokes even if it no longer verifies, and a
stretch of the log that cannot be read after a key was created *suspends*
that key (its revocation may be in there) until an admin replaces it.

``<data-dir>/state/api_keys.json`` is only a sealed snapshot of the projection
(``{"through_seq": S, "keys": [...]}``, engine/state.py) so that a start on a
big log replays only the key entries after S (through the term postings).  A
snapshot that fails its seal is ignored, reported and rebuilt from the whole
log.  A snapshot replaced by an older copy of itself only means a longer
replay (its through_seq is older); if the entries after it were purged by
retention meanwhile, the keys it holds are suspended instead, since a
revocation may have gone with them (the snapshot is refreshed before every
purge, so this never happens to a snapshot the node wrote last).

The running server holds the projection in memory and updates it after its
own durable create/revoke appends (it is the log's only writer):
authentication never reads a file.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from auditlog.engine.datadir import Node
from auditlog.engine.entry import Entry, EntryDraft, format_ts
from auditlog.engine.errors import EngineError
from auditlog.engine.log import NodeLog
from auditlog.engine.state import StateSeal, StateTampered
from auditlog.query.errors import QueryError

ROLES = ("writer", "reader", "admin")
#: what each role may do; admin includes reader, nothing includes writer's append
ROLE_GRANTS = {"writer": {"append"}, "reader": {"read"}, "admin": {"read", "admin"}}
KEY_FILE = "api_keys.json"
CREATE, REVOKE = "audit.api_key_create", "audit.api_key_revoke"
KEY_ACTIONS = frozenset({CREATE, REVOKE})
_KEY_ID = re.compile(r"[0-9a-f]{12}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
#: a damaged stretch whose seq is unknown: after every key
_UNKNOWN_SEQ = 1 << 62


class AuthError(QueryError):
    http_status = 401


class ForbiddenError(QueryError):
    http_status = 403


class KeyNotFoundError(QueryError):
    http_status = 404


@dataclass
class ApiKey:
    id: str
    name: str
    role: str
    secret_hmac: str
    #: µs: the create entry's ts, and its seq
    created: int
    seq: int
    revoked: int | None = None
    #: why the key grants nothing although no revocation was read (see module docstring)
    suspended: str | None = None

    def public(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "created": _iso(self.created),
            "revoked": _iso(self.revoked) if self.revoked else None,
            "suspended": self.suspended,
        }

    def snapshot(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "secret_hmac": self.secret_hmac,
            "created": self.created,
            "seq": self.seq,
            "revoked": self.revoked,
            "suspended": self.suspended,
        }

    def __repr__(self) -> str:
        return f"ApiKey(id={self.id!r}, name={self.name!r}, role={self.role!r})"


def _iso(t_us: int) -> str:
    return format_ts(t_us)[:19] + "Z"


def check_role(role: str) -> str:
    if role not in ROLES:
        raise QueryError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return role


def check_name(name) -> str:
    # C0/C1 controls as ingest refuses them in any logged field; lone surrogates cannot be
    # encoded (the key entry could not be written)
    if (
        not isinstance(name, str)
        or not name.strip()
        or len(name) > 128
        or any(ord(c) < 32 or 127 <= ord(c) <= 159 or 0xD800 <= ord(c) <= 0xDFFF for c in name)
    ):
        raise QueryError("name must be 1-128 printable characters")
    return name


def _from_snapshot(d) -> ApiKey:
    """One snapshot record, checked field by field (ValueError if malformed)."""
    if not isinstance(d, dict) or set(d) != {
        "id",
        "name",
        "role",
        "secret_hmac",
        "created",
        "seq",
        "revoked",
        "suspended",
    }:
        raise ValueError("bad key record")
    ok = (
        isinstance(d["id"], str)
        and _KEY_ID.fullmatch(d["id"])
        and isinstance(d["name"], str)
        and d["role"] in ROLES
        and isinstance(d["secret_hmac"], str)
        and _HEX64.fullmatch(d["secret_hmac"])
        and type(d["created"]) is int
        and type(d["seq"]) is int
        and (d["revoked"] is None or type(d["revoked"]) is int)
        and (d["suspended"] is None or isinstance(d["suspended"], str))
    )
    if not ok:
        raise ValueError("bad key record")
    return ApiKey(**d)


class KeyStore:
    """The node's API keys, projected from the log (see the module docstring).

    ``writer`` (the node's open LogWriter) is needed to create and revoke keys
    and to write the snapshot; without it the store only reads.  Call
    :meth:`load` once; what was wrong with the snapshot or the log is then in
    :attr:`problems` (for the caller to report) and, for the snapshot file
    itself, in :attr:`rejected`.
    """

    def __init__(self, node: Node, state_dir: Path, log: NodeLog, writer=None):
        self.path = state_dir / KEY_FILE
        self.log = log
        self.writer = writer
        self._seal = StateSeal(node.key, node.node_id)
        self._mac_key = node.key.derive(b"api-keys")
        self._lock = threading.Lock()
        self._keys: dict[str, ApiKey] = {}
        #: every key entry up to this seq is in the projection
        self.through_seq = 0
        self.problems: list[str] = []
        #: why the snapshot file was not used (None: it was, or there was none)
        self.rejected: str | None = None
        self._dummy = self._secret_hmac("alk_000000000000_" + "a" * 52)

    def _secret_hmac(self, token: str) -> str:
        return self._mac_key.mac(token.encode("utf-8", "surrogatepass")).hex()

    # -- loading ---------------------------------------------------------------

    def load(self) -> KeyStore:
        """Snapshot (if it opens) plus the key entries after it; with a writer, the
        snapshot is then brought up to date (and an unusable one replaced, after an
        ``audit.recovery`` entry says so)."""
        head = self.log.head()[0]
        infos = self.log.segment_infos()
        first_seq = next((i.first_seq for i in infos if i.header is not None), head + 1)
        snap = self._read_snapshot()
        after = None
        damage: list[int] = []
        if snap is not None:
            self.through_seq, self._keys = snap
            if self.through_seq > head:
                self.problems.append(
                    f"{KEY_FILE}: taken at seq {self.through_seq} but the log ends at seq {head} "
                    "(cut back, or lost in a crash without fsync); its keys are kept"
                )
                self.through_seq = head
            elif self.through_seq + 1 < first_seq:
                # the entries right after the snapshot were purged: a revocation may have gone too
                damage.append(self.through_seq + 1)
                self.problems.append(
                    f"{KEY_FILE}: the key entries after seq {self.through_seq} were purged by retention "
                    "since this snapshot was taken; its keys are suspended (re-create them)"
                )
            after = self.through_seq or None
        elif first_seq > 1:
            self.problems.append(
                f"no usable {KEY_FILE} and the log starts at seq {first_seq} (older entries purged by "
                "retention): keys created before it are unknown and grant nothing (re-create them)"
            )
        for e in self.log.scan(
            after_seq=after, terms={"action": KEY_ACTIONS}, predicate=lambda e: e.action in KEY_ACTIONS
        ):
            self._apply(e, damage)
        self._suspend_before(damage)
        self.through_seq = max(self.through_seq, head)
        if self.writer is not None:
            if self.rejected is not None:
                self.writer.append_batch(
                    [EntryDraft("system", "audit.recovery", details={"reason": self.rejected, "file": KEY_FILE})]
                )
                set_aside(self.path)
            with self._lock:
                self._save_locked()
        return self

    def _read_snapshot(self) -> tuple[int, dict[str, ApiKey]] | None:
        try:
            data = self._seal.read(self.path)
        except StateTampered as e:
            if _legacy(self.path):
                self.rejected = f"{KEY_FILE}: unsealed key file from an earlier version"
                self.problems.append(
                    self.rejected + ": its keys grant nothing; re-create them "
                    "(auditlog apikey create, or POST /api/v1/api-keys)"
                )
            else:
                self.rejected = f"{KEY_FILE}: {str(e).split(': ', 1)[-1]}"
                self.problems.append(self.rejected + "; ignored, keys rebuilt from the log")
            return None
        if data is None:
            return None
        try:
            if (
                not isinstance(data, dict)
                or set(data) != {"through_seq", "keys"}
                or type(data["through_seq"]) is not int
                or not isinstance(data["keys"], list)
            ):
                raise ValueError("bad snapshot")
            keys = {k.id: k for k in map(_from_snapshot, data["keys"])}
        except ValueError:
            self.rejected = f"{KEY_FILE}: sealed, but not a key snapshot"
            self.problems.append(self.rejected + "; ignored, keys rebuilt from the log")
            return None
        return data["through_seq"], keys

    def _apply(self, e: Entry, damage: list[int]) -> None:
        d = e.details if isinstance(e.details, dict) else {}
        kid = d.get("key_id")
        if e.action == REVOKE and isinstance(kid, str):
            # a revocation counts even from an entry that no longer verifies: it only takes away
            rec = self._keys.get(kid)
            if rec is not None and rec.revoked is None:
                rec.revoked = e.ts
            return
        if e.integrity != "ok":
            # unreadable or altered: whatever it was (a revocation?) is lost
            damage.append(e.seq or _UNKNOWN_SEQ)
            return
        mac = d.get("secret_hmac")
        if (
            e.action == CREATE
            and isinstance(kid, str)
            and _KEY_ID.fullmatch(kid)
            and d.get("role") in ROLES
            and isinstance(mac, str)
            and _HEX64.fullmatch(mac)
            and isinstance(e.target, str)
            and kid not in self._keys
        ):
            self._keys[kid] = ApiKey(kid, e.target, d["role"], mac, e.ts, e.seq)
        # (a create without secret_hmac is from an earlier version: it grants nothing)

    def _suspend_before(self, damage: list[int]) -> None:
        if not damage:
            return
        s = max(damage)
        where = "at an unknown seq" if s == _UNKNOWN_SEQ else f"at seq {s}"
        suspended = []
        for rec in self._keys.values():
            if rec.revoked is None and rec.suspended is None and any(rec.seq < x for x in damage):
                rec.suspended = f"the log cannot be read {where} after this key was created (a revocation may be there)"
                suspended.append(rec.id)
        if suspended:
            self.problems.append(
                f"API keys {', '.join(sorted(suspended))} suspended: the log cannot be "
                f"read {where} after they were created (re-create them)"
            )

    def _save_locked(self) -> None:
        self._seal.write(self.path, {"through_seq": self.through_seq, "keys": [k.snapshot() for k in self._sorted()]})

    def checkpoint(self) -> None:
        """Bring the snapshot up to the log's head (before retention drops entries)."""
        with self._lock:
            self.through_seq = max(self.through_seq, self.log.head()[0])
            self._save_locked()

    # -- changes (through the log) ---------------------------------------------

    def _writer(self):
        if self.writer is None:
            raise EngineError("API keys are changed through the node's writer")
        return self.writer

    def _record(self, user: str, action: str, target: str, ip, details: dict):
        res = self._writer().append_batch([EntryDraft(user, action, target, None, ip, None, True, details)])
        # every key entry is written under self._lock, so none is left out of S
        self.through_seq = max(self.through_seq, res.last_seq)
        return res

    def _save_after_change(self) -> None:
        try:
            self._save_locked()
        except OSError:
            # the entry is durable; the snapshot just lags and the next start replays it
            pass

    def create(
        self, name: str, role: str, *, user: str = "system", ip: str | None = None, by_key_id: str | None = None
    ) -> tuple[ApiKey, str]:
        """A new key, recorded in the log; returns (record, the key string shown once)."""
        check_role(role)
        check_name(name)
        with self._lock:
            kid = secrets.token_hex(6)
            while kid in self._keys:
                kid = secrets.token_hex(6)
            secret = base64.b32encode(secrets.token_bytes(32)).decode().rstrip("=").lower()
            token = f"alk_{kid}_{secret}"
            details = {"key_id": kid, "role": role, "secret_hmac": self._secret_hmac(token)}
            if by_key_id is not None:
                details["by_key_id"] = by_key_id
            res = self._record(user, CREATE, name, ip, details)
            rec = self._keys[kid] = ApiKey(kid, name, role, details["secret_hmac"], res.ts, res.first_seq)
            self._save_after_change()
        return rec, token

    def revoke(self, kid: str, *, user: str = "system", ip: str | None = None, by_key_id: str | None = None) -> ApiKey:
        with self._lock:
            rec = self._keys.get(kid)
            if rec is None:
                raise KeyNotFoundError(f"no API key with id {kid!r}")
            details = {"key_id": rec.id, "role": rec.role}
            if by_key_id is not None:
                details["by_key_id"] = by_key_id
            res = self._record(user, REVOKE, rec.name, ip, details)
            if rec.revoked is None:
                rec.revoked = res.ts
            self._save_after_change()
            return rec

    # -- reading ---------------------------------------------------------------

    def _sorted(self) -> list[ApiKey]:
        return sorted(self._keys.values(), key=lambda k: k.seq)

    def list(self) -> list[ApiKey]:
        with self._lock:
            return self._sorted()

    def authenticate(self, token: str | None) -> ApiKey:
        """The key record for a presented token, or AuthError (never says which part was wrong)."""
        if not token:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        parts = token.split("_")
        if len(parts) != 3 or parts[0] != "alk":
            raise AuthError("invalid API key")
        rec = self._keys.get(parts[1])  # one dict read: no lock, no file
        expected = rec.secret_hmac if rec is not None else self._dummy
        ok = hmac.compare_digest(self._secret_hmac(token), expected)
        if rec is None or not ok or rec.revoked is not None or rec.suspended is not None:
            raise AuthError("invalid API key")
        return rec


def set_aside(path: Path) -> None:
    """Keep a state file that failed its seal as ``<name>.rejected`` (for whoever
    investigates; nothing reads it), so it is reported once, not at every start."""
    try:
        os.replace(path, path.with_name(path.name + ".rejected"))
    except OSError:
        pass  # reported again next time


def _legacy(path: Path) -> bool:
    """Is ``path`` the plain key file of earlier versions (``{"keys": [...]}``, unsealed)?"""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("keys"), list) and "mac" not in data


def require(key: ApiKey, grant: str) -> None:
    if grant not in ROLE_GRANTS.get(key.role, ()):
        raise ForbiddenError(f"the {key.role!r} role may not do this (needs {grant!r})")
