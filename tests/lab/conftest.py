"""The failure lab: crashes, restarts, poison, fuzzing, security and load limits.

Run `pytest -s tests/lab` to see the figures each test prints (lines starting with `LAB`).
Sizes are modest so the whole lab fits in a few minutes on two cores; `soak.py` runs the
crash and restart scenarios longer.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _quiet_children(monkeypatch):
    """Worker and edge subprocesses log errors only: the lab's output is its figures."""
    monkeypatch.setenv("SPARK_LOG_LEVEL", "ERROR")
