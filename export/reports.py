"""Four-eyes report: was every sensitive change confirmed by a second, different person?

A rule is a pair (action, confirming action); the default is
``config.dkim_rotate`` confirmed by ``config.dkim_rotate_confirm`` whose
``details.confirms`` names the rotation's id.  An action is ``ok`` only when at
least one intact confirmation came from a different user.  Confirmations of
ids that do not exist among the actions seen are listed as orphans.

The report never vouches for what it could not read: every integrity violation
the read met (a damaged entry, or a marker for a stretch of log that could not
be verified, such as a deleted segment whose time span overlaps the report's)
is listed under ``violations`` and makes the whole report ``ok: false``, since
the missing part could hold an unconfirmed change or the confirmation of one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from auditlog.engine.entry import Entry, format_ts

DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (("config.dkim_rotate", "config.dkim_rotate_confirm"),)


@dataclass(frozen=True)
class FourEyesRule:
    action: str
    confirm: str


def parse_pairs(texts: Iterable[str]) -> tuple[FourEyesRule, ...]:
    """``action:confirm_action`` strings -> rules (ValueError on a malformed one)."""
    from auditlog.ingest.taxonomy import ACTION_RE

    rules = []
    for t in texts:
        a, sep, c = t.partition(":")
        if not sep or not ACTION_RE.fullmatch(a) or not ACTION_RE.fullmatch(c) or a == c:
            raise ValueError(f"four-eyes pair must be ACTION:CONFIRM_ACTION with two different actions, got {t!r}")
        rules.append(FourEyesRule(a, c))
    return tuple(rules)


def four_eyes(
    entries: Iterable[Entry], rules: Iterable[FourEyesRule], from_us: int | None = None, to_us: int | None = None
) -> dict:
    """Build the report from a stream holding the actions and their confirmations.

    Actions count when inside [from, to); confirmations count whenever they
    came (a confirmation may follow after the range ends).  A confirmation is
    an orphan when it lies in the range and confirms no action seen (one after
    the range that confirms an action after the range is not this report's).
    """
    rules = tuple(rules)
    by_action = {r.action: r for r in rules}
    by_confirm = {r.confirm: r for r in rules}
    actions: dict[str, dict] = {}
    outside: dict[str, str] = {}  # id -> action of the actions seen after the range
    confirmations: list[Entry] = []
    violations: list[dict] = []
    for e in entries:
        if e.integrity != "ok":
            violations.append(
                {
                    "id": e.id,
                    "node": e.node,
                    "seq": e.seq,
                    "ts": format_ts(e.ts),
                    "action": e.action,
                    "violation": e.violation or "integrity violation",
                }
            )
        if e.action in by_action:
            if (from_us is None or e.ts >= from_us) and (to_us is None or e.ts < to_us):
                actions[e.id] = {
                    "id": e.id,
                    "action": e.action,
                    "user": e.user,
                    "target": e.target,
                    "ts": format_ts(e.ts),
                    "integrity": e.integrity,
                    "confirmed_by": [],
                    "confirmations": [],
                    "self_confirmations": [],
                }
            else:
                outside[e.id] = e.action
        elif e.action in by_confirm:
            confirmations.append(e)
    orphans = []
    for c in confirmations:
        ref = c.details.get("confirms") if isinstance(c.details, dict) else None
        a = actions.get(ref) if isinstance(ref, str) else None
        if a is None and isinstance(ref, str) and outside.get(ref) == by_confirm[c.action].action:
            continue  # confirms an action that exists but lies outside the range: not this report's
        if a is None or by_confirm[c.action].action != a["action"]:
            if (from_us is not None and c.ts < from_us) or (to_us is not None and c.ts >= to_us):
                continue  # read only to find late confirmations of the range's actions
            orphans.append(
                {
                    "id": c.id,
                    "action": c.action,
                    "user": c.user,
                    "confirms": ref,
                    "ts": format_ts(c.ts),
                    "problem": "confirms an action not found in the range",
                }
            )
            continue
        if c.integrity != "ok":
            a.setdefault("problems", []).append(f"confirmation {c.id} fails integrity")
            continue
        if c.user == a["user"]:
            a["self_confirmations"].append(c.id)
        else:
            a["confirmations"].append(c.id)
            if c.user not in a["confirmed_by"]:
                a["confirmed_by"].append(c.user)
    out = []
    for a in actions.values():
        a["ok"] = bool(a["confirmed_by"]) and a["integrity"] == "ok"
        if a["integrity"] != "ok":
            a["problem"] = "the action's own entry fails integrity"
        elif a["confirmed_by"]:
            a["problem"] = None
        elif a["self_confirmations"]:
            a["problem"] = "confirmed only by the same user"
        else:
            a["problem"] = "unconfirmed"
        out.append(a)
    return {
        "rules": [{"action": r.action, "confirm": r.confirm} for r in rules],
        "rotations": out,
        "orphan_confirmations": orphans,
        "violations": violations,
        "ok": all(a["ok"] for a in out) and not orphans and not violations,
    }
