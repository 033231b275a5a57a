"""Benchmarks: each module runs with ``python -m tests.bench.<name>`` and prints figures."""
