"""Reading the log: filters and time parsing, scans, the cross-node merge and the HTTP service."""
