"""The audit trail: the hash chain, the log, signed checkpoints, verification."""
