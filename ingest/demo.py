"""A realistic day of gateway activity, for ``auditlog serve --demo``.

``seed_demo`` spreads the day over the 24 hours before now (``details.demo_time``
is the time of day each event is set at), through the writer's demo-only
``seed_history``, so quick ranges and the histogram have something to show.
Events are ordinary signed entries; seeding happens only on an empty log.
"""

from __future__ import annotations

import random

from auditlog.engine.entry import EntryDraft

ADMINS = ["alice", "bob", "carol", "dave"]
ADMIN_IPS = {"alice": "192.0.2.10", "bob": "192.0.2.11", "carol": "2001:db8::c", "dave": "198.51.100.7"}
ATTACKER_IPS = ["203.0.113.66", "203.0.113.67", "2001:db8:bad::1"]
UA = "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"
DOMAINS = ["example.com", "example.org", "shop.example.net"]
SUBJECTS = [
    "Invoice 2026-0314 overdue",
    "Your parcel is waiting",
    "Q1 board minutes",
    "Re: contract draft (v3)",
    "Password expiry notice",
    "Team offsite – agenda",
]


def demo_day(seed: int = 7) -> list[EntryDraft]:
    rnd = random.Random(seed)
    out: list[EntryDraft] = []

    def at(h, m):
        return {"demo_time": f"{h:02d}:{m:02d}"}

    for h in range(24):
        for admin in ADMINS:
            if 7 <= h <= 18 and rnd.random() < 0.5:
                out.append(
                    EntryDraft(admin, "auth.login", None, None, ADMIN_IPS[admin], UA, True, at(h, rnd.randrange(60)))
                )
        if rnd.random() < 0.6:
            ip = rnd.choice(ATTACKER_IPS)
            for _ in range(rnd.randint(2, 6)):
                out.append(
                    EntryDraft(
                        rnd.choice(ADMINS + ["admin", "root"]),
                        "auth.login_failed",
                        None,
                        None,
                        ip,
                        "python-requests/2.32",
                        False,
                        {**at(h, rnd.randrange(60)), "reason": "bad password"},
                    )
                )
            if rnd.random() < 0.3:
                out.append(
                    EntryDraft(
                        "system",
                        "security.brute_force_detected",
                        ip,
                        None,
                        ip,
                        None,
                        True,
                        {**at(h, 59), "attempts": rnd.randint(10, 40)},
                    )
                )
        if 8 <= h <= 17:
            for _ in range(rnd.randint(1, 4)):
                dom = rnd.choice(DOMAINS)
                rcpt = f"{rnd.choice(['anna', 'ben', 'chris', 'dora'])}@{dom}"
                mail_id = f"Q{rnd.randrange(10**8):08d}"
                out.append(
                    EntryDraft(
                        rnd.choice(ADMINS),
                        rnd.choice(["quarantine.release", "quarantine.release", "quarantine.discard"]),
                        mail_id,
                        dom,
                        ADMIN_IPS["alice"],
                        UA,
                        True,
                        {
                            **at(h, rnd.randrange(60)),
                            "mail_id": mail_id,
                            "subject": rnd.choice(SUBJECTS),
                            "sender": f"noreply@{rnd.choice(['billing.example', 'parcel.example', 'partner.example'])}",
                            "recipient": rcpt,
                        },
                    )
                )
    # configuration changes, 09:00-12:00
    for i, (admin, action, target, old, new) in enumerate(
        [
            ("alice", "config.filter_update", "filter-12", "tag", "quarantine"),
            ("bob", "config.rbl_enable", "zen.spamhaus.org", None, "enabled"),
            ("carol", "config.dmarc_policy_change", "example.com", "p=none", "p=quarantine"),
            ("alice", "config.domain_add", "shop.example.net", None, "added"),
            ("dave", "config.filter_create", "filter-31", None, "block .iso attachments"),
        ]
    ):
        out.append(
            EntryDraft(
                admin,
                action,
                target,
                "example.com" if "dmarc" in action else None,
                ADMIN_IPS[admin],
                UA,
                True,
                {**at(9 + i // 2, 10 * i), "old": old, "new": new},
            )
        )
    # DKIM rotations: confirmed by another admin, self-confirmed, unconfirmed
    out.append(
        EntryDraft(
            "alice",
            "config.dkim_rotate",
            "example.com",
            "example.com",
            ADMIN_IPS["alice"],
            UA,
            True,
            {**at(10, 5), "selector": "s2026a"},
        )
    )
    out.append(
        EntryDraft(
            "bob",
            "config.dkim_rotate",
            "example.org",
            "example.org",
            ADMIN_IPS["bob"],
            UA,
            True,
            {**at(14, 20), "selector": "s2026b"},
        )
    )
    out.append(
        EntryDraft(
            "carol",
            "config.dkim_rotate",
            "shop.example.net",
            "shop.example.net",
            ADMIN_IPS["carol"],
            UA,
            True,
            {**at(16, 45), "selector": "s2026c"},
        )
    )
    out.append(EntryDraft("system", "cluster.node_join", "gw2", None, None, None, True, at(6, 0)))
    out.append(EntryDraft("system", "backup.trigger", "nightly", None, None, None, True, at(2, 0)))
    return out


def seed_demo(writer, now_us: int) -> int:
    """Append the demo day (and its DKIM confirmations) stamped over the last 24 h."""
    day_start = now_us - 24 * 3600 * 1_000_000
    items = [(_minute(d), d) for d in demo_day()]
    pending_confirms = [("10:30", 0, "dave"), ("14:25", 1, "bob")]
    rotations: list[str] = []
    items.sort(key=lambda x: x[0])
    by_minute: dict[int, list[EntryDraft]] = {}
    for m, d in items:
        by_minute.setdefault(m, []).append(d)
    for hhmm, _idx, _who in pending_confirms:
        by_minute.setdefault(_minute_of(hhmm), [])
    count = 0
    for m in sorted(by_minute):
        drafts = list(by_minute[m])
        for hhmm, idx, who in pending_confirms:
            if _minute_of(hhmm) == m and idx < len(rotations):
                rot = ["example.com", "example.org"][idx]
                drafts.append(
                    EntryDraft(
                        who,
                        "config.dkim_rotate_confirm",
                        rot,
                        rot,
                        ADMIN_IPS[who],
                        UA,
                        True,
                        {"demo_time": hhmm, "confirms": rotations[idx]},
                    )
                )
        if not drafts:
            continue
        at = max(day_start + m * 60 * 1_000_000, writer.last_ts)
        res = writer.seed_history(drafts, min(at, now_us))
        for i, d in enumerate(drafts):
            if d.action == "config.dkim_rotate":
                rotations.append(f"{writer.node}:{res.first_seq + i}")
        count += len(drafts)
    return count


def _minute_of(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def _minute(d: EntryDraft) -> int:
    return _minute_of(d.details.get("demo_time", "00:00"))


def confirmations(first_rotation_ids: list[str]) -> list[EntryDraft]:
    """Confirmations for the rotations: one by another admin, one self-confirmed."""
    a, b = first_rotation_ids[:2]
    return [
        EntryDraft(
            "dave",
            "config.dkim_rotate_confirm",
            "example.com",
            "example.com",
            ADMIN_IPS["dave"],
            UA,
            True,
            {"demo_time": "10:30", "confirms": a},
        ),
        EntryDraft(
            "bob",
            "config.dkim_rotate_confirm",
            "example.org",
            "example.org",
            ADMIN_IPS["bob"],
            UA,
            True,
            {"demo_time": "14:25", "confirms": b},
        ),
    ]
