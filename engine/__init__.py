"""Per-node, append-only, HMAC-chained segment log (no HTTP in here)."""
