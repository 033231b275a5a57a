"""The WORM vault: the ObjectStore protocol, the vault service, the file and S3
backends, lock-state reconciliation."""
