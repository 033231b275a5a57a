"""Capture: webhook signatures, the journal, projection into records."""
