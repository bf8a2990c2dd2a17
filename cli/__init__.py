"""The ``auditlog`` command line and its TOML configuration (thin wiring)."""
