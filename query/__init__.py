"""Reading the log: filters and time parsing, node-local scans and sources, the
cross-node merges and cursors; the running node (``node.py``), its HTTP service
(``http/``) and its cluster (``cluster/``)."""
