"""The record core's foundation: database base and types, the write gate, the clock,
the error tree, subject names, scheduled jobs."""
