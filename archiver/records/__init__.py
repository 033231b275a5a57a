"""The archive's records: their tables, reading them back (open, verify, page), conversations."""
