"""Retention policies, legal holds, disposition, erasure by crypto-shredding and
reconciliation of the vault's real lock state against its records."""
