"""Shared helpers for the test suite (real processes, free ports, polling with deadlines)."""
