"""The action taxonomy (SPEC section 3), the rule for action names, and which
actions are the node's own (never accepted from a client)."""

from __future__ import annotations

import re

#: Dotted lower-case action name.  Use with ``fullmatch`` (``$`` alone would
#: accept a trailing newline).
ACTION_RE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+")

#: Actions outside the taxonomy are accepted only under this prefix.
CUSTOM_PREFIX = "custom."

#: Actions the log writes about itself (subset of TAXONOMY).
AUDIT_ACTIONS: frozenset[str] = frozenset(
    {
        "audit.retention_purge",
        "audit.export",
        "audit.recovery",
        "audit.clock_skew",
        "audit.api_key_create",
        "audit.api_key_revoke",
        "audit.checkpoint",
        "audit.checkpoint_refused",
        "audit.tree_head",
        "audit.legal_hold_set",
        "audit.legal_hold_release",
        "audit.archive_purge",
    }
)

#: Actions outside ``audit.*`` that the node records about itself: its cluster
#: membership (``query.cluster.fanout``) and the use of its API keys (``query.node``).
NODE_ACTIONS: frozenset[str] = frozenset(
    {
        "cluster.node_join",
        "cluster.node_leave",
        "auth.api_key_used",
    }
)

#: Everything only the node writes; ingest refuses these from clients (a forged
#: ``cluster.node_join`` or ``auth.api_key_used`` would pass for the node's own record).
RESERVED_ACTIONS: frozenset[str] = AUDIT_ACTIONS | NODE_ACTIONS

TAXONOMY: frozenset[str] = (
    frozenset(
        {
            "auth.login",
            "auth.login_failed",
            "auth.logout",
            "auth.totp_setup",
            "auth.totp_reset",
            "auth.api_key_used",
            "user.create",
            "user.update",
            "user.delete",
            "user.role_change",
            "user.password_reset",
            "config.domain_add",
            "config.domain_remove",
            "config.filter_create",
            "config.filter_update",
            "config.filter_delete",
            "config.rbl_enable",
            "config.rbl_disable",
            "config.dkim_rotate",
            "config.dkim_rotate_confirm",
            "config.dmarc_policy_change",
            "quarantine.release",
            "quarantine.discard",
            "quarantine.train_spam",
            "quarantine.train_ham",
            "cluster.node_join",
            "cluster.node_leave",
            "licence.activate",
            "licence.renew",
            "backup.trigger",
            "restore.execute",
            "security.brute_force_detected",
            "security.rate_limit_hit",
            "security.session_hijack_detected",
        }
    )
    | AUDIT_ACTIONS
)


def is_known_action(a: object) -> bool:
    """True for taxonomy entries and for well-formed names under ``custom.``."""
    if not isinstance(a, str):
        return False
    if a in TAXONOMY:
        return True
    return a.startswith(CUSTOM_PREFIX) and ACTION_RE.fullmatch(a) is not None


#: the endings of an action name that say it records a failure
FAILURE_SUFFIXES = ("_failed", "_denied", "_rejected")


def says_failure(action: str) -> bool:
    """Whether the action's name says it records a failure (``auth.login_failed``,
    ``custom.relay_denied``): such an event is ``success: false``, implied when the
    field is left out and refused when it says true."""
    last = action.rsplit(".", 1)[-1]
    return last.endswith(FAILURE_SUFFIXES) or last in ("failed", "denied", "rejected")
