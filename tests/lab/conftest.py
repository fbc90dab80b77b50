"""The failure lab: crashes, restarts, poison, fuzzing, security and load limits.

Run `pytest -s tests/lab` to see the figures each test prints (lines starting with `LAB`).
Sizes are modest so the whole lab fits in a few minutes on two cores; `soak.py` runs the
crash and restart scenarios longer.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/lab/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _quiet_children(monkeypatch):
    """Worker and edge subprocesses log errors only: the lab's output is its figures."""
    monkeypatch.setenv("SPARK_LOG_LEVEL", "ERROR")
