"""Renderers of verified entry streams: CSV, NDJSON/ECS, PDF, syslog forwarding, reports."""
