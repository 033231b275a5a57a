"""Observability: structured logging with redaction, request ids, metrics."""
