"""Benchmarks: scenarios against a SQLite baseline, in one run."""
