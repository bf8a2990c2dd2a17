"""The cluster as one node sees it: peers over mutual TLS, fan-out reads,
membership, the peer listener, the cluster PKI and witnessed checkpoints."""
