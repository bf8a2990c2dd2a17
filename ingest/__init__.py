"""Ingest layer: the client-facing event model, its validation and input parsing (NDJSON, CLI details)."""
